"""Retention: finished jobs older than CLIPGAN_RESULT_RETENTION_DAYS go with their
pictures, in batches, swept by one process at a time; and `clipgan storage gc` finds
what a failure left (dry run first)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import update

from tests.web_backend.helpers import SQLITE_ONLY, Account
from tests.web_backend.jobs.test_deletion import counts
from tests.web_backend.jobs.test_jobs import finish, png
from web_backend.app import create_app
from web_backend.core.models import Blob, BlobRef, Job, Lease, utcnow
from web_backend.core.settings import WebSettings
from web_backend.jobs.retention import RetentionSweeper
from web_backend.storage import refs
from web_backend.storage.blobs import blob_key


@pytest.fixture
def app(make_settings: Callable[..., WebSettings]) -> FastAPI:
    """Pictures kept 3 days; the app's own sweeper runs an hour after start (the tests
    call its ``sweep`` themselves)."""
    app = create_app(make_settings(limits={"max_active_jobs": 50, "submissions_per_minute": 100},
                                   data={"result_retention_days": 3,
                                         "retention_interval_s": 3600}))
    return app


def _jobs(alice: Account, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 4})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _age(app: FastAPI, job_ids: list[str], days: float) -> None:
    with app.state.services.write_session_factory() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids))
                        .values(finished_at=utcnow() - timedelta(days=days)))
        session.commit()


def _sweeper(app: FastAPI, name: str, **kw: object) -> RetentionSweeper:
    services = app.state.services
    return RetentionSweeper(sessions=services.write_session_factory, blobs=services.blobs,
                            days=3, batch=2, owner=name, **kw)


def test_old_pictures_expire_in_batches_by_one_sweeper(app: FastAPI, alice: Account) -> None:
    old, recent, waiting = _jobs(alice, 5), _jobs(alice, 2), _jobs(alice, 1)
    for index, job_id in enumerate(old):
        finish(app, job_id, png((index, 0, 0)))
    finish(app, recent[0], png((0, 0, 0)))  # shares its picture with old[0]
    finish(app, recent[1], png((9, 9, 9)))
    _age(app, old, days=10)
    _age(app, recent, days=1)
    with app.state.services.write_session_factory() as session:  # an upload a crash left
        refs.pin(session, f"{refs.UPLOAD_PREFIX}lost", {blob_key(b"upload"): 6})
        session.execute(update(BlobRef).where(BlobRef.owner == f"{refs.UPLOAD_PREFIX}lost")
                        .values(created_at=utcnow() - timedelta(hours=2)))
        session.commit()
    asyncio.run(app.state.services.blobs.store.put(blob_key(b"upload"), b"upload"))
    before = counts(app)

    own = app.state.retention
    own.batch = 2
    swept = asyncio.run(own.sweep())
    assert (swept.jobs, swept.uploads) == (5, 1)
    assert swept.blobs == 5  # four old pictures and the upload; the shared one stays
    _age(app, recent, days=10)
    other = _sweeper(app, "another process")
    assert asyncio.run(other.sweep()).jobs == 0  # the app's sweeper holds the lease
    _age(app, recent, days=1)

    after = counts(app)
    assert before["jobs"] - after["jobs"] == 5
    assert before["objects"] - after["objects"] == 5
    for job_id in old:
        assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
    for job_id in (*recent, *waiting):
        assert alice.get(f"/v1/jobs/{job_id}").status_code == 200
    assert alice.get(f"/v1/jobs/{recent[0]}/image").content == png((0, 0, 0))


def test_another_process_takes_over_a_silent_sweepers_lease(app: FastAPI,
                                                            alice: Account) -> None:
    jobs = _jobs(alice, 2)
    for job_id in jobs:
        finish(app, job_id, png((1, 1, 1)))
    assert asyncio.run(app.state.retention.sweep()).jobs == 0  # nothing due; lease held
    _age(app, jobs[:1], days=10)
    other = _sweeper(app, "another process")
    assert asyncio.run(other.sweep()).jobs == 0  # the app's sweeper holds the lease
    with app.state.services.write_session_factory() as session:  # ... and goes silent
        session.execute(update(Lease).where(Lease.name == "retention")
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert asyncio.run(other.sweep()).jobs == 1
    assert asyncio.run(app.state.retention.sweep()).jobs == 0  # now the other's


def test_without_retention_nothing_finished_expires(app: FastAPI, alice: Account) -> None:
    (job,) = _jobs(alice, 1)
    finish(app, job, png())
    _age(app, [job], days=3650)
    services = app.state.services
    sweeper = RetentionSweeper(sessions=services.write_session_factory, blobs=services.blobs,
                               days=None)
    assert asyncio.run(sweeper.sweep()).jobs == 0
    assert alice.get(f"/v1/jobs/{job}/image").status_code == 200


@SQLITE_ONLY
def test_storage_gc_dry_run_then_apply(app: FastAPI, alice: Account, tmp_path: Path) -> None:
    (job,) = _jobs(alice, 1)
    finish(app, job, png((4, 4, 4)))
    services = app.state.services
    store = services.blobs.store
    orphan, fresh = b"left by a failed deletion", b"a write in progress"
    for data in (orphan, fresh):
        asyncio.run(store.put(blob_key(data), data))
    old = time.time() - 7200
    os.utime(store.path(blob_key(orphan)), (old, old))
    with services.write_session_factory() as session:  # a row whose object went
        session.add(Blob(key=blob_key(b"row only"), size=8, created_at=utcnow()))
        session.commit()

    env = {**os.environ, "CLIPGAN_DATA_DIR": str(tmp_path),
           "CLIPGAN_DATABASE_URL": services.settings.data.resolved_database_url}
    gc = [sys.executable, "-m", "clipgan.cli", "storage", "gc"]
    dry = subprocess.run(gc, capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {blob_key(orphan)} {len(orphan)} bytes" in dry.stdout
    assert f"would delete {blob_key(b'row only')} 8 bytes" in dry.stdout
    assert blob_key(fresh) not in dry.stdout  # younger than the grace period
    assert "dry run: nothing was deleted" in dry.stderr
    assert f"{len(orphan) + 8} B to reclaim" in dry.stderr
    assert asyncio.run(store.exists(blob_key(orphan)))

    done = subprocess.run([*gc, "--apply"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deleted 2 blobs" in done.stderr
    assert not asyncio.run(store.exists(blob_key(orphan)))
    assert asyncio.run(store.exists(blob_key(fresh)))
    assert alice.get(f"/v1/jobs/{job}/image").content == png((4, 4, 4))  # referenced: kept
    again = subprocess.run(gc, capture_output=True, text=True, env=env, timeout=120)
    assert "0 without a row, 0 rows nothing refers to" in again.stderr


def test_pins_of_jobs_that_are_gone_are_let_go(app: FastAPI, alice: Account) -> None:
    """A dispatcher that died right after storing a preview for a job deleted meanwhile
    left a pin no job holds: the sweeper lets it go after an hour."""
    services = app.state.services
    data = b"a preview of a deleted job"
    with services.write_session_factory() as session:
        refs.pin(session, "8d1c5a34-0000-4000-8000-000000000000", {blob_key(data): len(data)})
        session.commit()
    asyncio.run(services.blobs.store.put(blob_key(data), data))
    own = app.state.retention
    assert asyncio.run(own.sweep()).uploads == 0  # too recent: a dispatcher may be at it
    with services.write_session_factory() as session:
        session.execute(update(BlobRef).values(created_at=utcnow() - timedelta(hours=2)))
        session.commit()
    swept = asyncio.run(own.sweep())
    assert (swept.uploads, swept.blobs) == (1, 1)
    assert not asyncio.run(services.blobs.store.exists(blob_key(data)))
