"""The job queue: every way a job changes status, and the rules that keep it safe.

::

    enqueue ─▶ queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
                 ▲  │              │  ▲
                 │  └──cancel──▶ cancelled
                 └──requeue / reclaim_expired──┘   (renew keeps a running job's lease)

Each function is one transaction on the session it is given, and commits it. The
rules are enforced in SQL rather than in memory, so several dispatchers (one per web
process, or standalone) and crashes anywhere stay correct:

* **Claim**: the first ready job in queue order moves ``queued -> running`` in one conditional
  UPDATE (PostgreSQL picks the row with ``FOR UPDATE SKIP LOCKED``; SQLite runs the
  claim in an IMMEDIATE transaction, see :mod:`web_backend.core.db`). Each claim bumps
  ``fencing_token`` and counts an attempt.
* **Fencing**: every write by a claim's holder is
  ``UPDATE ... WHERE id = :id AND fencing_token = :token AND status = 'running'``; a
  holder whose lease was taken over writes nothing and gets :class:`LeaseLost`.
* **Lease**: writes and heartbeats push ``lease_expires_at`` forward; a lease that runs
  out (process killed, node lost) is reclaimed: re-queued while attempts remain,
  failed with a reason after the last.
* **Results**: :func:`finish` with ``succeeded`` takes the stored PNG's key, so a
  succeeded job always has its image (the caller stores it first, pinned by a
  reference: :mod:`web_backend.storage.refs`); a fenced write may let go of the
  references the row no longer names (``released``).
* **Webhooks**: every transition that ends a job records its pending webhook in the
  same transaction (:mod:`web_backend.webhooks.outbox`).
* **Usage**: every transition into or out of ``queued``/``running`` moves the owner's
  ``user_usage`` counters in the same transaction (active jobs; the day's images, which
  a failure gives back), so admission reads one row instead of counting jobs. Each
  enqueued job also takes the next ``queue_seq``: its position is that number minus
  the queue head's (:func:`head`), an O(1) lookup whatever the queue's length.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.orm import Session

from web_backend.core.changes import mark_changed
from web_backend.core.models import Counter, Job, JobStatus, UserUsage, utcnow
from web_backend.storage import refs
from web_backend.webhooks import outbox

__all__ = ["Claim", "JobStatus", "LeaseLost", "NewJob", "cancel", "claim", "enqueue",
           "finish", "head", "reclaim_expired", "renew", "requeue"]


class LeaseLost(Exception):
    """Another dispatcher owns the job now (our lease ran out); stop touching it."""


@dataclass(frozen=True)
class Claim:
    """A running job held under a lease: what its holder needs to run and fence it."""

    job_id: str
    token: int                         # fencing token: this claim's writes carry it
    attempt: int                       # 1 for the first try
    request: dict[str, Any]            # the stored GenerationRequest (no image bytes)
    image_prompt_key: str | None       # the image prompt in blob storage, if any


def _lease_end(lease_s: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_s)


@dataclass(frozen=True)
class NewJob:
    """A job admission decided to queue (``jobs.submit``): the row's values."""

    id: str
    user_id: int
    request: dict[str, Any]            # GenerationRequest as JSON, no image bytes
    image_prompt_key: str | None       # blob key of the image prompt
    idempotency_key: str | None        # unique per user when given
    progress_total: int                # steps the search will take (0: sample)
    webhook_url: str | None            # checked already (webhooks.targets)
    webhook_events: list[str] | None   # endings to announce there
    batch_id: str | None               # the first job of a submission of several
    created_at: datetime


def enqueue(session: Session, jobs: Sequence[NewJob]) -> list[int]:
    """Queue ``jobs`` (in the caller's transaction, which commits): each takes the next
    queue number, and each owner's usage counts them. Returns their queue numbers.
    Raises ``IntegrityError`` when an idempotency key is taken."""
    if not jobs:
        return []
    core = session.connection()  # Core statements: no ORM bookkeeping on the hot path
    last = core.execute(_TAKE_NUMBERS, {"n": len(jobs)}).scalar_one()
    numbers = list(range(last - len(jobs) + 1, last + 1))
    core.execute(_INSERT_JOB, [
        dict(id=job.id, user_id=job.user_id, status=JobStatus.queued, request=job.request,
             image_prompt_key=job.image_prompt_key, idempotency_key=job.idempotency_key,
             progress_total=job.progress_total, webhook_url=job.webhook_url,
             webhook_events=job.webhook_events, batch_id=job.batch_id, queue_seq=number,
             created_at=job.created_at, updated_at=job.created_at)
        for job, number in zip(jobs, numbers, strict=True)])
    today = utcnow().date()
    core.execute(_COUNT_QUEUED, [{"user": user_id, "n": count, "today": today}
                                 for user_id, count in Tally(job.user_id for job in jobs).items()])
    return numbers


_TABLES = Job.metadata.tables
_TAKE_NUMBERS = (update(_TABLES["counters"]).where(Counter.name == "job_seq")
                 .values(value=Counter.value + bindparam("n")).returning(Counter.value))
_INSERT_JOB = insert(_TABLES["jobs"])
_COUNT_QUEUED = (update(_TABLES["user_usage"]).where(UserUsage.user_id == bindparam("user"))
                 .values(active_jobs=UserUsage.active_jobs + bindparam("n"),
                         images_today=case((UserUsage.day == bindparam("today"),
                                            UserUsage.images_today), else_=0) + bindparam("n"),
                         day=bindparam("today")))
_HEAD = select(func.min(Job.queue_seq)).where(Job.status == JobStatus.queued)


def head(session: Session) -> int | None:
    """The queue number of the oldest queued job (None: nothing waits)."""
    value: int | None = session.connection().execute(_HEAD).scalar()
    return value


def _left(session: Session, ended: Iterable[tuple[int, datetime, bool]]) -> None:
    """Jobs (owner, created at, failed) left queued/running for good: their owners' active
    counts go down, and a failure gives back its image of the day it was made."""
    for user_id, created_at, failed in ended:
        created_day: date = created_at.date()
        given_back = case((UserUsage.day == created_day, 1), else_=0) if failed else 0
        session.execute(update(UserUsage).where(UserUsage.user_id == user_id).values(
            active_jobs=UserUsage.active_jobs - 1,
            images_today=UserUsage.images_today - given_back))


def cancel(session: Session, *, job: Job) -> Job:
    """Idempotent: queued -> cancelled now; running -> flagged for its dispatcher."""
    if job.status is JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        job.error = "cancelled by the user"
        outbox.record(session, (job.id,), JobStatus.cancelled)
        _left(session, [(job.user_id, job.created_at, False)])
    elif job.status is JobStatus.running:
        job.cancel_requested = True
    session.commit()
    return job


def claim(session: Session, *, owner: str, lease_s: float) -> Claim | None:
    """Take the oldest job that is ready to run, or None."""
    now = utcnow()
    ready = and_(Job.status == JobStatus.queued, Job.cancel_requested.is_(False),
                 or_(Job.available_at.is_(None), Job.available_at <= now))
    pick = select(Job.id).where(ready).order_by(Job.queue_seq, Job.created_at, Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    job_id = session.scalar(pick)
    if job_id is None:
        session.commit()
        return None
    row = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.running, lease_owner=owner, lease_expires_at=_lease_end(lease_s),
                started_at=now, fencing_token=Job.fencing_token + 1, attempts=Job.attempts + 1,
                available_at=None)
        .returning(Job.fencing_token, Job.attempts, Job.request, Job.image_prompt_key)
    ).first()
    if row is not None:
        mark_changed(session, (job_id,))
    session.commit()
    if row is None:
        return None
    return Claim(job_id=job_id, token=row[0], attempt=row[1], request=row[2],
                 image_prompt_key=row[3])


_LEASE_ONLY = {"lease_expires_at"}


def _fenced(session: Session, held: Claim, released: list[str] | None = None,
            **values: Any) -> bool:
    """Apply ``values`` only while ``held`` still owns the job; returns its cancel flag.
    ``released``: the job's references to blobs its row no longer names (a replaced
    preview, a result whose storing failed) are let go, and their keys added here for
    the caller to collect after the commit; fenced, so only the holder does it."""
    row = session.execute(
        update(Job).where(Job.id == held.job_id, Job.fencing_token == held.token,
                          Job.status == JobStatus.running)
        .values(**values).returning(Job.cancel_requested, Job.user_id, Job.created_at)).first()
    if row is not None and values.keys() - _LEASE_ONLY:  # a renewal alone shows nothing
        mark_changed(session, (held.job_id,))
    if row is not None and values.get("status") in outbox.EVENT_OF_STATUS:
        outbox.record(session, (held.job_id,), values["status"])
        _left(session, [(row[1], row[2], values["status"] is JobStatus.failed)])
    if row is not None and released is not None:
        released += refs.release_stale(session, held.job_id)
    session.commit()
    if row is None:
        raise LeaseLost(held.job_id)
    return bool(row[0])


def renew(session: Session, held: Claim, *, lease_s: float,
          progress_step: int | None = None, progress_total: int | None = None,
          score: float | None = None, preview_key: str | None = None,
          released: list[str] | None = None) -> bool:
    """Extend the lease, recording progress when given; True when a cancel was asked.
    A new ``preview_key`` (stored by ``BlobKeeper.save``) replaces the last: pass
    ``released`` to have the old one's key handed back for collecting."""
    progress = {k: v for k, v in dict(progress_step=progress_step, progress_total=progress_total,
                                      score=score, preview_key=preview_key).items()
                if v is not None}
    return _fenced(session, held, released, lease_expires_at=_lease_end(lease_s), **progress)


def finish(session: Session, held: Claim, *, status: JobStatus, error: str | None = None,
           result_key: str | None = None, seed: int | None = None,
           score: float | None = None, timings: dict[str, float] | None = None,
           steps: int | None = None, released: list[str] | None = None) -> None:
    """End a running job: succeeded (with its stored picture), failed or cancelled."""
    if not status.terminal:
        raise ValueError(f"finish needs a final status, not {status}")
    if status is JobStatus.succeeded and result_key is None:
        raise ValueError("a succeeded job needs its stored picture")
    values: dict[str, Any] = dict(status=status, finished_at=utcnow(), lease_owner=None,
                                  lease_expires_at=None, error=error)
    if status is JobStatus.succeeded:
        values.update(result_key=result_key, seed=seed, score=score, timings=timings)
        if steps is not None:
            values.update(progress_step=steps, progress_total=steps)
    _fenced(session, held, released, **values)


def requeue(session: Session, held: Claim, *, reason: str, delay_s: float,
            count_attempt: bool = True, released: list[str] | None = None) -> None:
    """Put a running job back in line after ``delay_s``; ``count_attempt=False`` when the
    try never really started (back pressure, a dispatcher shutting down)."""
    extra = {} if count_attempt else {"attempts": Job.attempts - 1}
    _fenced(session, held, released, status=JobStatus.queued, lease_owner=None,
            lease_expires_at=None, available_at=utcnow() + timedelta(seconds=delay_s),
            error=reason, progress_step=0, **extra)


def reclaim_expired(session: Session, *, max_attempts: int) -> tuple[int, int]:
    """Jobs whose holder went silent: re-queued while attempts remain, else failed.

    Returns (re-queued, failed).
    """
    now = utcnow()
    expired = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
    failed_rows = session.execute(
        update(Job).where(expired, Job.attempts >= max_attempts)
        .values(status=JobStatus.failed, finished_at=now, lease_owner=None,
                lease_expires_at=None,
                error=f"the image service stopped answering {max_attempts} times; please "
                      "submit again").returning(Job.id, Job.user_id, Job.created_at)).all()
    failed = [job_id for job_id, _, _ in failed_rows]
    _left(session, [(user_id, created, True) for _, user_id, created in failed_rows])
    requeued = session.scalars(
        update(Job).where(expired).values(
            status=JobStatus.queued, lease_owner=None, lease_expires_at=None,
            available_at=None, progress_step=0,
            error="the image service stopped answering; retrying").returning(Job.id)).all()
    mark_changed(session, (*failed, *requeued))
    outbox.record(session, failed, JobStatus.failed)
    session.commit()
    return len(requeued), len(failed)
