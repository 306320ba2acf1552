"""Admission at constant cost: limits exact under concurrency (two web processes at
once), usage counters that agree with the rows whatever the transitions, submissions of
several pictures, and positions read from queue numbers."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.web_backend.helpers import Account, make_admin
from web_backend.app import create_app
from web_backend.core.models import Job, JobStatus, UserUsage, utcnow
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.services import Services


def _parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (each on its own thread, released together)."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@pytest.mark.parametrize("limit", ["max_active_jobs", "daily_images"])
def test_fifty_submissions_at_once_against_a_limit_of_ten_admit_exactly_ten(
        make_settings: Callable[..., WebSettings], limit: str) -> None:
    """From two web processes (two apps, each with its own batches) on one database."""
    limits = {"submissions_per_minute": 1000, "max_active_jobs": 1000, "daily_images": 1000,
              limit: 10}
    settings = make_settings(limits=limits)
    a, b = create_app(settings), create_app(settings)
    with TestClient(a) as first, TestClient(b) as second:
        alice = Account(first, "alice")
        calls = [(lambda c=client: c.post("/v1/jobs", json={"prompt": "smile"},
                                          headers=alice.auth).status_code)
                 for client in (first, second) for _ in range(25)]
        statuses = _parallel(calls)
        assert sorted(statuses).count(202) == 10 and statuses.count(429) == 40, statuses
        with a.state.services.session_factory() as session:
            jobs = session.scalar(select(func.count()).select_from(Job)
                                  .where(Job.user_id == alice.id))
            usage = session.get(UserUsage, alice.id)
        assert jobs == 10 and usage is not None
        assert usage.active_jobs == 10 and usage.images_today == 10


def _truth(services: Services, user_id: int) -> tuple[int, int]:
    """(active jobs, today's jobs that did not fail), counted from the rows."""
    day_start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    with services.session_factory() as session:
        active = session.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user_id, Job.status.in_((JobStatus.queued, JobStatus.running))))
        today = session.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user_id, Job.created_at >= day_start,
            Job.status != JobStatus.failed))
    return int(active or 0), int(today or 0)


def _counted(services: Services, user_id: int) -> tuple[int, int]:
    with services.session_factory() as session:
        usage = session.get(UserUsage, user_id)
    assert usage is not None
    return usage.active_jobs, usage.images_today


def test_usage_counters_agree_with_the_rows_whatever_happens(
        app: Any, client: TestClient) -> None:
    """Submissions of one or several pictures, cancels, claims, successes, failures,
    retries and reclaimed leases, in random order: after each, the counters equal what
    counting the rows says."""
    services: Services = app.state.services
    users = [Account(client, name) for name in ("ann", "ben", "cat")]
    admin = make_admin(app, Account(client, "root"))
    for user in users:
        admin.put(f"/v1/admin/users/{user.id}/limits",
                  json={"max_active_jobs": 1000, "submissions_per_minute": 10_000})
    rng = random.Random(7)
    held: list[queue.Claim] = []
    for _ in range(120):
        action = rng.choice(["submit", "submit", "cancel", "claim", "finish", "requeue",
                             "expire"])
        user = rng.choice(users)
        if action == "submit":
            r = user.post("/v1/jobs", json={"prompt": "smile", "n": rng.randint(1, 3)})
            assert r.status_code == 202, r.text
        elif action == "cancel":
            listed = user.get("/v1/jobs", params={"limit": 100}).json()["items"]
            mine = [j for j in listed if j["status"] in ("queued", "running")]
            if mine:
                assert user.delete(f"/v1/jobs/{rng.choice(mine)['id']}").status_code == 200
        elif action == "claim":
            with services.write_session_factory() as session:
                claim = queue.claim(session, owner="test", lease_s=60)
            if claim is not None:
                held.append(claim)
        elif action in ("finish", "requeue") and held:
            claim = held.pop(rng.randrange(len(held)))
            with services.write_session_factory() as session:
                try:
                    if action == "requeue":
                        queue.requeue(session, claim, reason="retrying", delay_s=0)
                    else:
                        status = rng.choice([JobStatus.succeeded, JobStatus.failed,
                                             JobStatus.cancelled])
                        extra = {"result_key": "x.png"} if status is JobStatus.succeeded \
                            else {}
                        queue.finish(session, claim, status=status, **extra)
                except queue.LeaseLost:
                    pass
        elif action == "expire" and held:
            claim = held.pop()
            with services.write_session_factory() as session:
                session.execute(update(Job).where(Job.id == claim.job_id).values(
                    lease_expires_at=utcnow() - timedelta(seconds=1),
                    attempts=rng.choice([1, 3])))
                session.commit()
            with services.write_session_factory() as session:
                queue.reclaim_expired(session, max_attempts=3)
        for user in users:
            assert _counted(services, user.id) == _truth(services, user.id), action


def test_several_pictures_in_one_submission(app: Any, alice: Account) -> None:
    make_admin(app, alice).put(f"/v1/admin/users/{alice.id}/limits",
                               json={"max_active_jobs": 10})
    r = alice.post("/v1/jobs", json={"prompt": "smile", "seed": 40, "n": 3},
                   headers={"Idempotency-Key": "three"})
    assert r.status_code == 202, r.text
    first = r.json()
    batch = first["batch"]
    assert len(batch) == 3 and batch[0] == first["id"] and first["queue_position"] == 1
    seeds = [alice.get(f"/v1/jobs/{job_id}").json()["request"]["seed"] for job_id in batch]
    assert seeds == [40, 41, 42]  # three pictures, not one three times
    positions = [alice.get(f"/v1/jobs/{job_id}").json()["queue_position"] for job_id in batch]
    assert positions == [1, 2, 3]
    listed = {job["id"] for job in alice.get("/v1/jobs").json()["items"]}
    assert set(batch) <= listed
    again = alice.post("/v1/jobs", json={"prompt": "smile", "seed": 40, "n": 3},
                       headers={"Idempotency-Key": "three"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["batch"] == batch
    other = alice.post("/v1/jobs", json={"prompt": "smile", "seed": 40, "n": 2},
                       headers={"Idempotency-Key": "three"})
    assert other.status_code == 409
    single = alice.post("/v1/jobs", json={"prompt": "smile"}).json()
    assert single["batch"] is None and single["queue_position"] == 4


def test_each_picture_counts_against_the_limits(alice: Account) -> None:
    """The default cap is 3 active jobs: 2 + 2 does not fit, and nothing is half-made."""
    assert alice.post("/v1/jobs", json={"prompt": "smile", "n": 2}).status_code == 202
    over = alice.post("/v1/jobs", json={"prompt": "smile", "n": 2})
    assert over.status_code == 429 and "asks for 2" in over.json()["detail"]
    assert len(alice.get("/v1/jobs").json()["items"]) == 2
    assert alice.post("/v1/jobs", json={"prompt": "smile", "n": 1}).status_code == 202
    too_many = alice.post("/v1/jobs", json={"prompt": "smile", "n": 17})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["n"]


def test_a_position_follows_the_head_of_the_queue(app: Any, alice: Account,
                                                 bob: Account) -> None:
    first = alice.post("/v1/jobs", json={"prompt": "a"}).json()
    second = bob.post("/v1/jobs", json={"prompt": "b"}).json()
    assert (first["queue_position"], second["queue_position"]) == (1, 2)
    with app.state.services.write_session_factory() as session:
        claim = queue.claim(session, owner="test", lease_s=60)
    assert claim is not None and claim.job_id == first["id"]  # queue order
    assert bob.get(f"/v1/jobs/{second['id']}").json()["queue_position"] == 1
