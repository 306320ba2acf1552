"""The dispatcher on SQLite and PostgreSQL, against the real Serve deployment in-process."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from ml_backend.png import read_png_text
from tests.web_backend.helpers import Account, make_admin, wait_for
from web_backend.app import create_app, make_dispatcher
from web_backend.core.models import Job, JobStatus, utcnow
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.jobs.ml_client import HandleMLClient, NoMLClient
from web_backend.jobs.queue import LeaseLost


@pytest.fixture
def live(make_settings: Callable[..., WebSettings], ml_handle) -> Iterator[tuple[FastAPI, TestClient]]:
    settings = make_settings(dispatch={"lease_s": 5, "backoff_s": [0.1]})
    app = create_app(settings, ml_client=HandleMLClient(ml_handle))
    with TestClient(app) as client:
        yield app, client


def test_a_job_runs_to_a_stored_picture(live) -> None:
    app, client = live
    alice = Account(client, "alice")
    job = alice.post("/v1/jobs", json={"prompt": "blue hair | hat:-0.5", "steps": 6, "seed": 4,
                                       "preview_every": 3}).json()
    done = wait_for(alice, job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == {"step": 6, "total": 6, "score": done["progress"]["score"]}
    assert done["seed"] == 4 and done["timings"]["total_s"] > 0
    assert done["preview_url"] is not None
    png = client.get(done["image_url"]).content
    text = read_png_text(png)
    assert text["prompt"] == "blue hair:1 | hat:-0.5" and text["seed"] == "4"
    assert app.state.dispatcher.executions == 1


def test_cancel_reaches_the_running_search(live, ml_handle) -> None:
    _, client = live
    alice = Account(client, "alice")
    job = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 500}).json()
    wait_for(alice, job["id"], lambda j: j["progress"]["step"] >= 2)
    alice.delete(f"/v1/jobs/{job['id']}")
    cancelled = wait_for(alice, job["id"], lambda j: j["status"] == "cancelled", timeout=15)
    assert cancelled["progress"]["step"] < 500
    for _ in range(50):  # the search stops at its next step boundary
        load = ml_handle.info.remote().result()["load"]["default"]
        if load["active"] == 0:
            break
        time.sleep(0.1)
    assert load["active"] == 0


def test_invalid_requests_fail_at_once_with_the_reason(live) -> None:
    app, client = live
    alice = Account(client, "alice")
    job = alice.post("/v1/jobs", json={"prompt": "word " * 80}).json()
    failed = wait_for(alice, job["id"], lambda j: j["status"] == "failed")
    assert "tokens long" in failed["error"]
    with app.state.services.session_factory() as session:
        assert session.get(Job, job["id"]).attempts == 1


def test_time_limit_fails_the_job(make_settings, ml_handle) -> None:
    app = create_app(make_settings(dispatch={"timeout_s": 1.5}),
                     ml_client=HandleMLClient(ml_handle))
    with TestClient(app) as client:
        alice = Account(client, "alice")
        job = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 500}).json()
        failed = wait_for(alice, job["id"], lambda j: j["status"] == "failed", timeout=30)
        assert failed["error"] == "the job ran past its time limit"


def test_unreachable_ml_side_is_retried_then_failed(make_settings) -> None:
    app = create_app(make_settings(dispatch={"lease_s": 5, "max_attempts": 3,
                                             "backoff_s": [0.05], "poll_s": 0.05}))
    with TestClient(app) as client:
        alice = Account(client, "alice")
        job_id = alice.post("/v1/jobs", json={"prompt": "smile"}).json()["id"]
        _run_until_failed(app, alice, job_id)


def _run_until_failed(app: FastAPI, alice: Account, job_id: str) -> None:
    dispatcher = make_dispatcher(app.state.services, NoMLClient(), capacity=2)

    async def run_until_done() -> None:
        runner = asyncio.create_task(dispatcher.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if alice.get(f"/v1/jobs/{job_id}").json()["status"] == "failed":
                break
        dispatcher.stop()
        await runner

    asyncio.run(run_until_done())
    job = alice.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    # a fixed sentence: what the transport said ("no ML side configured") is only logged
    assert job["error"] == ("the image service failed 3 times; last error: the image service "
                            "could not be reached")
    assert dispatcher.executions == 3


def _queue(app: FastAPI, alice: Account, n: int) -> list[str]:
    make_admin(app, alice)
    alice.put(f"/v1/admin/users/{alice.id}/limits",
              json={"max_active_jobs": 1000, "submissions_per_minute": 1000})
    return [alice.post("/v1/jobs", json={"prompt": "smile", "seed": i}).json()["id"]
            for i in range(n)]


def test_concurrent_claims_take_each_job_exactly_once(app: FastAPI, client: TestClient) -> None:
    ids = _queue(app, Account(client, "alice"), 24)
    writes = app.state.services.write_session_factory
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        while True:
            with writes() as session:
                claim = queue.claim(session, owner=owner, lease_s=30)
            if claim is None:
                return
            with lock:
                claimed.append(claim.job_id)

    threads = [threading.Thread(target=claim_all, args=(f"owner-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_fencing_after_a_lease_is_taken_over(app: FastAPI, client: TestClient) -> None:
    job_id = _queue(app, Account(client, "alice"), 1)[0]
    services = app.state.services

    def write(transition, *args, **kwargs):
        with services.write_session_factory() as session:
            return transition(session, *args, **kwargs)

    first = write(queue.claim, owner="stale", lease_s=60)

    def expire() -> None:
        with services.write_session_factory() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                lease_expires_at=utcnow().replace(year=2000)))
            session.commit()

    expire()  # the stale owner went silent past its lease
    assert write(queue.reclaim_expired, max_attempts=2) == (1, 0)
    second = write(queue.claim, owner="fresh", lease_s=60)
    assert second.job_id == job_id and second.token == first.token + 1
    with pytest.raises(LeaseLost):
        write(queue.renew, first, lease_s=60, progress_step=3)
    with pytest.raises(LeaseLost):
        write(queue.finish, first, status=JobStatus.succeeded, result_key="0" * 64 + ".png")
    expire()  # the second owner dies too: that was the last attempt
    assert write(queue.reclaim_expired, max_attempts=2) == (0, 1)
    with services.session_factory() as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "stopped answering 2 times" in job.error
        assert job.result_key is None


def test_metrics_report_queue_jobs_and_durations(live) -> None:
    _, client = live
    alice = Account(client, "alice")
    done = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 3}).json()
    wait_for(alice, done["id"], lambda j: j["status"] == "succeeded")
    text = client.get("/metrics").text
    assert 'clipgan_jobs{status="succeeded"} 1.0' in text
    assert "clipgan_queue_depth 0.0" in text
    assert 'clipgan_job_duration_seconds_count{status="succeeded"} 1.0' in text
    assert "clipgan_search_steps_total 3.0" in text
    for _ in range(10):
        client.post("/v1/auth/token", data={"username": "alice", "password": "wrong"})
    assert 'clipgan_rate_limited_total{limit="/v1/auth/token"}' in client.get("/metrics").text
