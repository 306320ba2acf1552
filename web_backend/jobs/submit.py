"""Whether a submission is allowed (limits, idempotency), and queueing it, in batches.

Status changes themselves are :mod:`web_backend.jobs.queue`'s; this module decides
whether new jobs may enter the queue.

**Constant cost.** Admission reads the account's ``user_usage`` row (active jobs, the
day's images: kept by every transition, see ``queue``), never counts jobs, and a new
job's position is its queue number minus the head's. Nothing it does grows with the
queue or with the account's day.

**Exact under concurrency.** The usage rows are read ``FOR UPDATE`` (PostgreSQL; on
SQLite the writing transaction is IMMEDIATE, so writers take turns), decided in
Python, and moved in the same transaction that inserts the jobs: fifty submissions at
once against a limit of ten, from any number of processes, admit exactly ten.

**Group commit.** Submissions that arrive while a batch is being written wait for the
next one: a batch is one transaction, a handful of statements and one commit, however
many jobs it admits (``max_batch``). On a busy process that is most of the cost of a
submission, the commit's ``fsync`` above all, shared; on an idle one a batch is one job
and nobody waits. Each submission still gets its own answer: 202, a replay, or its own
refusal (a 429 for one account does not fail its batch mates).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ml_backend import image_prompts
from ml_backend.protocol import MAX_SEED, seed_to_int
from web_backend.accounts.service import limits_for
from web_backend.core.errors import (
    Conflict,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from web_backend.core.models import Job, JobStatus, User, UserUsage, utcnow
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.settings import LimitSettings
from web_backend.jobs import queue
from web_backend.jobs.eta import Throughput
from web_backend.jobs.schemas import JobRequest
from web_backend.storage import refs
from web_backend.storage.keeper import BlobKeeper

__all__ = ["Admitted", "Submissions"]

_STORED_APART = {"image_prompt", "webhook_url", "webhook_events", "n"}


def _stored_request(request: JobRequest, index: int = 0) -> dict[str, Any]:
    """The request as kept in a job row (what the ML side is asked: the webhook has
    columns of its own, ``n`` made the batch); the image prompt (stored apart) by its
    hash, so an Idempotency-Key retried with a different picture is a different request.
    Job ``index`` of a batch with a seed gets the next seeds: n pictures, not one n times."""
    stored = request.model_dump(mode="json", exclude_none=True, exclude=_STORED_APART)
    if request.image_prompt is not None:
        stored["image_prompt_sha256"] = hashlib.sha256(request.image_prompt).hexdigest()
    if index and request.seed is not None:
        stored["seed"] = (seed_to_int(request.seed) + index) % (MAX_SEED + 1)
    return stored


def _webhook(request: JobRequest) -> tuple[str | None, list[str] | None]:
    if request.webhook_url is None:
        return None, None
    return request.webhook_url, list(request.webhook_events)


@dataclass(frozen=True)
class Admitted:
    """A submission's answer: its jobs' ids (the first is the one a single picture is);
    the first job, as its row when an earlier request with the same Idempotency-Key made
    it (``replayed``), else as just queued with its number; and what the 202 shows
    without another read (the queue's head, the ETA unit)."""

    ids: list[str]
    replayed: bool
    first: Job | queue.NewJob
    number: int | None
    head: int | None
    average_s: float


@dataclass
class _Usage:
    """An account's usage row, locked for this transaction and moved as jobs are admitted."""

    active_jobs: int
    day: date
    images_today: int


@dataclass
class _Pending:
    user_id: int
    request: JobRequest
    idempotency_key: str | None
    counted: bool
    image_key: str | None              # the stored image prompt, pinned by ``upload``
    upload: str | None                 # its reference's owner until the jobs take it over
    key_id: str | None
    key_per_minute: int | None
    done: asyncio.Future[Admitted] = field(repr=False)


class _Line:
    """One event loop's submissions waiting for the next batch."""

    def __init__(self) -> None:
        self.waiting: list[_Pending] = []
        self.writing: asyncio.Task[None] | None = None


class Submissions:
    """New jobs under the accounts' limits; what it needs, given once per app."""

    def __init__(self, *,
                 sessions:   sessionmaker[Session],  # writing sessions
                 limiter:    RateLimiter,            # submissions per minute
                 defaults:   LimitSettings,          # limits of accounts without their own
                 blobs:      BlobKeeper,             # where image prompts go
                 throughput: Throughput,             # the ETA unit, Retry-After of a limit
                 max_batch:  int = 64,               # submissions per transaction at most
                 ) -> None:
        self.sessions = sessions
        self.limiter = limiter
        self.defaults = defaults
        self.blobs = blobs
        self.throughput = throughput
        self.max_batch = max_batch
        self._lines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Line] = \
            weakref.WeakKeyDictionary()
        self.batches = 0        # transactions written so far (the bench reads them)
        self._collecting: set[asyncio.Task[int]] = set()

    # --- what routes call ----------------------------------------------------------

    def count(self, user: Any, n: int = 1) -> None:
        """Count ``n`` submissions against the account's per-minute limit (429 beyond)."""
        per_minute = limits_for(user, self.defaults).submissions_per_minute
        rate = self.limiter.hit("submit", str(user.id), limit=per_minute, cost=n)
        if not rate.allowed:
            raise rate.refusal(f"at most {per_minute} submissions per minute; try again in "
                               f"{rate.reset_after_s} s")

    async def submit(self, user_id: int, request: JobRequest, idempotency_key: str | None, *,
                     counted: bool = False, key_id: str | None = None,
                     key_per_minute: int | None = None) -> Admitted:
        """Queue ``request.n`` jobs for ``user_id``, or return the earlier ones for a
        retried Idempotency-Key; raises the refusal (:class:`ServiceError`) otherwise.
        ``counted``: the caller already counted them (:meth:`count`: before checking a
        webhook's URL, which resolves names). ``key_id``, ``key_per_minute``: the API key
        submitting, and its own limit within the account's."""
        image_key = upload = None
        if request.image_prompt is not None:  # decoded and reduced once, off the loop
            image = await anyio.to_thread.run_sync(_normalized, request.image_prompt)
            upload = f"{refs.UPLOAD_PREFIX}{uuid.uuid4()}"
            try:  # StoreUnavailable: the route answers 503, nothing was queued
                image_key = await self.blobs.save(upload, image)
            except BaseException:
                await self.blobs.forget(upload)
                raise
        loop = asyncio.get_running_loop()
        line = self._lines.setdefault(loop, _Line())
        pending = _Pending(user_id, request, idempotency_key, counted, image_key, upload,
                           key_id, key_per_minute, loop.create_future())
        line.waiting.append(pending)
        if line.writing is None:
            line.writing = loop.create_task(self._write_batches(line))
        return await pending.done

    # --- batches ---------------------------------------------------------------------

    async def _write_batches(self, line: _Line) -> None:
        try:
            while line.waiting:
                batch = line.waiting[:self.max_batch]
                del line.waiting[:self.max_batch]
                try:
                    answers, released = await anyio.to_thread.run_sync(self._admit, batch)
                except BaseException as exc:  # the database is away: each hears it
                    for pending in batch:
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue  # uploads stay pinned until clipgan storage gc
                if released:  # image prompts of refused or replayed submissions
                    self._collect_later(released)
                for pending, answer in zip(batch, answers, strict=True):
                    if pending.done.done():  # its request went away meanwhile
                        continue
                    if isinstance(answer, Admitted):
                        pending.done.set_result(answer)
                    else:
                        pending.done.set_exception(answer)
        finally:
            line.writing = None

    def _collect_later(self, keys: list[str]) -> None:
        """Off the batch's path: a store that is slow must not hold the next batch."""
        task = asyncio.get_running_loop().create_task(self.blobs.collect(keys))
        self._collecting.add(task)
        task.add_done_callback(self._collecting.discard)

    def _admit(self, batch: Sequence[_Pending]) -> tuple[list[Admitted | ServiceError],
                                                         list[str]]:
        """One transaction for the whole batch (retried when a parallel retry of the same
        Idempotency-Key won the race: the retry then finds and replays it)."""
        for attempt in range(3):
            try:
                return self._admit_once(batch)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _admit_once(self, batch: Sequence[_Pending]) -> tuple[list[Admitted | ServiceError],
                                                              list[str]]:
        now = utcnow()
        user_ids = sorted({pending.user_id for pending in batch})
        with self.sessions() as session:
            core = session.connection()  # Core reads: rows, no ORM objects to build
            users: dict[int, Any] = {user.id: user for user in core.execute(
                select(User.id, User.is_active, User.webhook_secret,
                       User.submissions_per_minute, User.max_active_jobs, User.daily_images)
                .where(User.id.in_(user_ids)))}
            usage = {user_id: _Usage(active, day, images) for user_id, active, day, images
                     in core.execute(
                         select(UserUsage.user_id, UserUsage.active_jobs, UserUsage.day,
                                UserUsage.images_today)
                         .where(UserUsage.user_id.in_(user_ids))
                         .order_by(UserUsage.user_id).with_for_update())}
            for user_id in users.keys() - usage.keys():  # an account without its row yet
                usage[user_id] = _usage_from_jobs(session, user_id, now)
            decided: list[tuple[list[queue.NewJob], bool] | ServiceError] = []
            new_jobs: list[queue.NewJob] = []
            keyed: dict[tuple[int, str], list[queue.NewJob]] = {}
            for pending in batch:
                try:
                    decision = self._decide(session, pending, users, usage, keyed, now)
                except ServiceError as refusal:
                    decided.append(refusal)
                    continue
                decided.append(decision)
                if not decision[1]:
                    new_jobs += decision[0]
            numbers = queue.enqueue(session, new_jobs)
            head = queue.head(session)
            average_s = self.throughput.average_job_seconds(session)
            existing = [decision[0][0].id for decision in decided
                        if not isinstance(decision, ServiceError) and decision[1]]
            replayed = _jobs_with_batches(session, existing)
            released = refs.hand_over(session, {
                pending.upload: (pending.image_key, [job.id for job in decision[0]]
                                 if not isinstance(decision, ServiceError) and not decision[1]
                                 else [])
                for pending, decision in zip(batch, decided, strict=True)
                if pending.upload is not None and pending.image_key is not None})
            session.commit()
        fresh = {job.id: (job, number) for job, number in zip(new_jobs, numbers, strict=True)}
        self.batches += 1
        answers: list[Admitted | ServiceError] = []
        for outcome in decided:
            if isinstance(outcome, ServiceError):
                answers.append(outcome)
                continue
            jobs, was_replayed = outcome
            if was_replayed:
                rows = replayed[jobs[0].id]
                answers.append(Admitted([row.id for row in rows], True, rows[0], None, head,
                                        average_s))
            else:
                first, number = fresh[jobs[0].id]
                answers.append(Admitted([job.id for job in jobs], False, first, number, head,
                                        average_s))
        return answers, released

    def _decide(self, session: Session, pending: _Pending, users: Mapping[int, Any],
                usage: dict[int, _Usage], keyed: dict[tuple[int, str], list[queue.NewJob]],
                now: datetime) -> tuple[list[queue.NewJob], bool]:
        """The jobs this submission adds (and False), or the earlier ones it replays (and
        True); raises its refusal. Moves the account's usage row in memory (locked)."""
        user, request = users.get(pending.user_id), pending.request
        if user is None or not user.is_active:
            raise Unauthorized("this account is disabled" if user else "no such account")
        stored = _stored_request(request)
        key = pending.idempotency_key
        if key is not None:
            earlier = keyed.get((user.id, key)) or _replay(session, user, key)
            if earlier is not None:
                _same_request(earlier, stored, request)
                return earlier, True
        if request.webhook_url is not None and not user.webhook_secret:
            raise Conflict("a webhook needs your webhook secret to sign it: create one with "
                           "POST /v1/users/me/webhook-secret, then submit again")
        n = request.n
        if not pending.counted:
            self.count(user, n)
        if pending.key_id is not None and pending.key_per_minute is not None:
            rate = self.limiter.hit("submit-key", pending.key_id,
                                    limit=pending.key_per_minute, cost=n)
            if not rate.allowed:
                raise rate.refusal(f"this API key may submit {pending.key_per_minute} "
                                   f"pictures per minute; try again in {rate.reset_after_s} s")
        limits = limits_for(user, self.defaults)
        counts = usage[user.id]
        if counts.active_jobs + n > limits.max_active_jobs:
            raise TooManyRequests(
                f"you already have {counts.active_jobs} jobs queued or running (limit "
                f"{limits.max_active_jobs}"
                + (f"; this submission asks for {n}" if n > 1 else "")
                + "); wait for one to finish or cancel one",
                retry_after_s=math.ceil(self.throughput.average_job_seconds(session)))
        today = now.date()
        images = counts.images_today if counts.day == today else 0
        if images + n > limits.daily_images:
            day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            until_midnight = (day_start + timedelta(days=1) - now).total_seconds()
            raise TooManyRequests(
                f"daily quota of {limits.daily_images} images reached"
                + (f" ({images} today; this submission asks for {n})" if n > 1 else "")
                + "; it resets at 00:00 UTC", retry_after_s=math.ceil(until_midnight))
        counts.active_jobs += n  # what queue.enqueue writes, for the next decision here
        counts.images_today, counts.day = images + n, today
        first = str(uuid.uuid4())
        webhook_url, webhook_events = _webhook(request)
        jobs = [queue.NewJob(
            id=first if index == 0 else str(uuid.uuid4()), user_id=user.id,
            request=stored if index == 0 else _stored_request(request, index),
            image_prompt_key=pending.image_key,
            idempotency_key=key if index == 0 else None,
            progress_total=0 if request.is_sample else request.steps,
            webhook_url=webhook_url, webhook_events=webhook_events,
            batch_id=first if n > 1 else None, created_at=now) for index in range(n)]
        if key is not None:
            keyed[(user.id, key)] = jobs
        return jobs, False


def _normalized(data: bytes) -> bytes:
    try:  # the ML side gets a small square PNG
        return image_prompts.normalize(data)
    except image_prompts.ImagePromptError as exc:
        raise Unprocessable(str(exc)) from None


def _usage_from_jobs(session: Session, user_id: int, now: datetime) -> _Usage:
    """The usage row of an account that has none, counted once from its jobs."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user_id, Job.status.in_((JobStatus.queued, JobStatus.running)))) or 0
    today = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user_id, Job.created_at >= day_start,
        Job.status != JobStatus.failed)) or 0
    session.execute(insert(UserUsage).values(user_id=user_id, active_jobs=active,
                                             day=now.date(), images_today=today))
    return _Usage(active, now.date(), today)


def _replay(session: Session, user: Any, key: str) -> list[queue.NewJob] | None:
    """The jobs an earlier submission with this key made (the first, then as many
    placeholders as it had batch mates: only their number matters here)."""
    job = session.scalar(select(Job).where(Job.user_id == user.id,
                                           Job.idempotency_key == key))
    if job is None:
        return None
    first = queue.NewJob(id=job.id, user_id=job.user_id, request=job.request,
                         image_prompt_key=job.image_prompt_key,
                         idempotency_key=job.idempotency_key,
                         progress_total=job.progress_total, webhook_url=job.webhook_url,
                         webhook_events=job.webhook_events, batch_id=job.batch_id,
                         created_at=job.created_at)
    size = 1
    if job.batch_id is not None:
        size = session.scalar(select(func.count()).select_from(Job)
                              .where(Job.batch_id == job.batch_id)) or 1
    return [first] * size


def _same_request(earlier: list[queue.NewJob], stored: dict[str, Any],
                  request: JobRequest) -> None:
    first = earlier[0]
    if first.request != stored or (first.webhook_url, first.webhook_events) \
            != _webhook(request) or len(earlier) != request.n:
        raise Conflict("this Idempotency-Key was used for a different request; use a new key "
                       "for a new job")


def _jobs_with_batches(session: Session, first_ids: list[str]) -> dict[str, list[Job]]:
    """The jobs made by earlier submissions (each first job, then its batch mates)."""
    if not first_ids:
        return {}
    found: dict[str, list[Job]] = {job_id: [] for job_id in first_ids}
    rows = session.scalars(select(Job).where(
        (Job.id.in_(first_ids)) | (Job.batch_id.in_(first_ids)))).all()
    for job in sorted(rows, key=lambda j: (j.queue_seq or 0, j.id)):
        owner = job.batch_id if job.batch_id in found else job.id
        found[owner].append(job)
    for jobs in found.values():  # the first job first, whatever the numbers say
        jobs.sort(key=lambda j: j.batch_id is not None and j.id != j.batch_id)
    return found
