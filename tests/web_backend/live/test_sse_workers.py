"""SSE across processes: two uvicorn workers, updates written by another process."""

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, update

from tests.servers import free_port, wait_ready
from web_backend.core.models import Job, utcnow

pytestmark = pytest.mark.slow


@pytest.fixture
def server(database_url: str, tmp_path: Path):
    port = free_port()
    env = {**os.environ, "CLIPGAN_ENV": "prod", "CLIPGAN_SECRET_KEY": secrets.token_hex(32),
           "CLIPGAN_DATABASE_URL": database_url, "CLIPGAN_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                             "web_backend.app:create_app_from_env", "--workers", "2",
                             "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, path="/healthz", timeout=60)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _events(url: str, out: list) -> None:
    with httpx.stream("GET", url, timeout=60) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event:
                out.append((event, json.loads(line.removeprefix("data: "))))
                if event == "done":
                    return


def test_every_worker_streams_progress_written_elsewhere(server: str, database_url: str) -> None:
    httpx.post(f"{server}/v1/users", json={"username": "alice", "email": "a@x.io",
                                          "password": "password123"}).raise_for_status()
    token = httpx.post(f"{server}/v1/auth/token",
                       data={"username": "alice", "password": "password123"}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    job = httpx.post(f"{server}/v1/jobs", json={"prompt": "smile", "steps": 3},
                     headers=auth).json()
    streams: list[list] = [[] for _ in range(4)]
    readers = [threading.Thread(target=_events, args=(server + job["events_url"], s))
               for s in streams]
    for r in readers:
        r.start()
    time.sleep(1.5)
    engine = create_engine(database_url)  # the "dispatcher": another process's writes
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job["id"]).values(
            status="running", started_at=utcnow()))
    for step in (1, 2, 3):
        time.sleep(0.7)
        with engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == job["id"]).values(progress_step=step))
    time.sleep(0.7)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job["id"]).values(
            status="succeeded", finished_at=utcnow()))
    engine.dispose()
    for r in readers:
        r.join(timeout=30)
    for events in streams:
        names = [name for name, _ in events]
        assert names[0] == "status" and events[0][1]["status"] == "queued"
        steps = [data["progress"]["step"] for name, data in events if name == "progress"]
        assert steps == [1, 2, 3]
        assert names[-1] == "done" and events[-1][1]["status"] == "succeeded"
