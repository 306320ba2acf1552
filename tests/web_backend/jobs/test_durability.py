"""Durability with real processes on real PostgreSQL: crashes lose no job, run none twice.

Each test starts `clipgan serve --generator in-process` processes (API + dispatcher +
generator in one process, so kill -9 takes all of it down at once)
on a fresh PostgreSQL database with a short lease, then breaks something for real.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from standardwebhooks.webhooks import Webhook

from tests.infra import fresh_postgres_database
from tests.servers import free_port, wait_ready
from tests.web_backend.helpers import WebhookReceiver
from web_backend.core import migrate

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database("clipgan_durable") as url:
        migrate.upgrade(url)
        yield url


SHARED_SECRET_KEY = secrets.token_hex(32)  # every web process of a deployment signs alike


class Server:
    def __init__(self, url: str, data_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
        env.update(CLIPGAN_DATA_DIR=str(data_dir), CLIPGAN_DATABASE_URL=url,
                   CLIPGAN_JOB_LEASE_S="3", CLIPGAN_RETRY_BACKOFF_S="[0.5]",
                   CLIPGAN_MAX_ACTIVE_JOBS="20", CLIPGAN_SUBMISSIONS_PER_MINUTE="100",
                   CLIPGAN_SECRET_KEY=SHARED_SECRET_KEY, CLIPGAN_ENV="prod",
                   RAY_USAGE_STATS_ENABLED="0")
        env.update(settings)
        self.log = (data_dir / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "serve", "--port",
                                      str(self.port), "--generator", "in-process"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_ready(self.base, self.proc, timeout=120)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


def sign_up(base: str, name: str) -> dict[str, str]:
    httpx.post(f"{base}/v1/users", json={"username": name, "email": f"{name}@x.io",
                                         "password": "password123"}).raise_for_status()
    token = httpx.post(f"{base}/v1/auth/token",
                       data={"username": name, "password": "password123"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def jobs_table(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status, attempts, error, result_key FROM jobs"))
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def wait_all_done(url: str, count: int, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            rows = jobs_table(url)
        except Exception:  # the database may be restarting
            time.sleep(0.5)
            continue
        if len(rows) == count and all(r["status"] not in ("queued", "running") for r in rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"jobs never finished: {jobs_table(url)}")


def test_kill_9_mid_job_then_restart_completes_it(pg_url: str, tmp_path: Path) -> None:
    server = Server(pg_url, tmp_path)
    try:
        auth = sign_up(server.base, "alice")
        job = httpx.post(f"{server.base}/v1/jobs", headers=auth,
                         json={"prompt": "smile", "steps": 150, "seed": 1}).json()
        for _ in range(600):
            state = httpx.get(f"{server.base}/v1/jobs/{job['id']}", headers=auth).json()
            if state["progress"]["step"] >= 5:
                break
            time.sleep(0.1)
        assert state["status"] == "running"
        server.kill9()  # no shutdown hooks, the lease is left behind
        assert jobs_table(pg_url)[0]["status"] == "running"
        server = Server(pg_url, tmp_path)
        rows = wait_all_done(pg_url, 1, timeout=180)
    finally:
        server.stop()
    assert rows[0]["status"] == "succeeded", rows
    assert rows[0]["attempts"] == 2 and rows[0]["result_key"]


def test_fifty_jobs_across_two_web_processes_run_exactly_once(pg_url: str,
                                                              tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    servers = [Server(pg_url, tmp_path / "a"), Server(pg_url, tmp_path / "b")]
    try:
        submitted = []
        for user in range(10):
            auth = sign_up(servers[user % 2].base, f"user{user}")
            for i in range(5):
                server = servers[(user + i) % 2]
                r = httpx.post(f"{server.base}/v1/jobs", headers=auth,
                               json={"prompt": f"girl {user} {i}", "steps": 3, "seed": i,
                                     "init_candidates": 4, "cutouts": 8})
                assert r.status_code == 202, r.text
                submitted.append(r.json()["id"])
        rows = wait_all_done(pg_url, 50, timeout=600)
    finally:
        for s in servers:
            s.stop()
    assert sorted(r["id"] for r in rows) == sorted(submitted)
    assert all(r["status"] == "succeeded" for r in rows), [r for r in rows if r["error"]]
    # a job's ML execution starts only after a successful claim, and each claim counts one
    # attempt: exactly one attempt each means exactly one execution each
    assert [r["attempts"] for r in rows] == [1] * 50


def test_postgres_restart_mid_run_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    server = Server(pg_url, tmp_path)
    try:
        auth = sign_up(server.base, "alice")
        ids = [httpx.post(f"{server.base}/v1/jobs", headers=auth,
                          json={"prompt": "smile", "steps": 40, "seed": i}).json()["id"]
               for i in range(6)]
        time.sleep(2)
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True, timeout=120)
        rows = wait_all_done(pg_url, 6, timeout=300)
    finally:
        server.stop()
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["status"] == "succeeded" for r in rows), rows


def deliveries_table(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status, attempts, last_error "
                                     "FROM webhook_deliveries"))
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def test_kill_9_between_success_and_webhook_still_delivers_after_restart(
        pg_url: str, tmp_path: Path) -> None:
    """The job succeeds while its receiver is down; the process dies before any delivery
    got through; after a restart (and the receiver's return) the webhook arrives."""
    port = free_port()  # nothing listens yet: every attempt fails to connect
    webhooks = dict(CLIPGAN_ENV="dev", CLIPGAN_WEBHOOK_ALLOW_NETWORKS='["127.0.0.1/32"]',
                    CLIPGAN_WEBHOOK_BACKOFF_S="[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]",
                    CLIPGAN_WEBHOOK_POLL_S="0.2")
    server = Server(pg_url, tmp_path, **webhooks)
    receiver = None
    try:
        auth = sign_up(server.base, "alice")
        secret = httpx.post(f"{server.base}/v1/users/me/webhook-secret",
                            headers=auth).json()["secret"]
        job = httpx.post(f"{server.base}/v1/jobs", headers=auth, json={
            "prompt": "smile", "steps": 3, "seed": 1, "init_candidates": 4, "cutouts": 8,
            "webhook_url": f"http://127.0.0.1:{port}/hook"}).json()
        assert wait_all_done(pg_url, 1, timeout=120)[0]["status"] == "succeeded"
        deadline = time.time() + 30
        # an attempt has failed and been recorded (a claim counts it before it is made)
        while not any(d["last_error"] for d in deliveries_table(pg_url)):
            assert time.time() < deadline, "no failed delivery was recorded"
            time.sleep(0.1)
        server.kill9()
        (pending,) = deliveries_table(pg_url)
        assert pending["status"] == "pending" and "reach" in pending["last_error"]
        receiver = WebhookReceiver(port=port)
        server = Server(pg_url, tmp_path, **webhooks)
        (headers, body), *_ = receiver.wait_for(1, timeout=60)
    finally:
        server.stop()
        if receiver is not None:
            receiver.close()
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]
    assert headers["webhook-id"] == pending["id"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_right_after_202s_loses_no_accepted_job(tmp_path: Path, kind: str) -> None:
    """Submissions stream in from many threads; the web process is killed -9 the moment
    twenty of them were answered 202 (others are mid-batch): every job answered 202 is in
    the database, queued, and the usage counters match the rows."""
    import threading

    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'clipgan.db'}" if kind == "sqlite"
               else stack.enter_context(fresh_postgres_database("clipgan_durable")))
        migrate.upgrade(url)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
        env.update(CLIPGAN_DATA_DIR=str(tmp_path), CLIPGAN_DATABASE_URL=url,
                   CLIPGAN_SECRET_KEY=SHARED_SECRET_KEY, CLIPGAN_ENV="prod",
                   CLIPGAN_MAX_ACTIVE_JOBS="1000", CLIPGAN_SUBMISSIONS_PER_MINUTE="10000")
        proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "web", "--port",
                                 str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc, path="/healthz", timeout=60)
            auth = sign_up(base, "alice")
            accepted: list[str] = []
            enough = threading.Event()
            lock = threading.Lock()

            def submit() -> None:
                with httpx.Client(base_url=base, headers=auth, timeout=10) as client:
                    while True:
                        try:
                            r = client.post("/v1/jobs", json={"prompt": "smile"})
                        except httpx.HTTPError:
                            return  # the server is gone
                        if r.status_code == 202:
                            with lock:
                                accepted.append(r.json()["id"])
                                if len(accepted) >= 20:
                                    enough.set()

            threads = [threading.Thread(target=submit) for _ in range(8)]
            for thread in threads:
                thread.start()
            assert enough.wait(60), "no 202s"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            for thread in threads:
                thread.join(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                stored = {row.id: row.status for row in conn.execute(
                    text("SELECT id, status FROM jobs"))}
                usage = conn.execute(text("SELECT active_jobs FROM user_usage")).scalar()
        finally:
            engine.dispose()
        missing = [job_id for job_id in accepted if job_id not in stored]
        assert missing == [] and all(stored[job_id] == "queued" for job_id in accepted)
        assert usage == len(stored)  # no half-written batch
