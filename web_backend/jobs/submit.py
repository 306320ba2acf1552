"""Whether a submission is allowed (limits, idempotency), and queueing it.

Status changes themselves are :mod:`web_backend.jobs.queue`'s; this module decides
whether a new job may enter the queue, and stores its image prompt first.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ml_backend import image_prompts
from web_backend.accounts.service import limits_for
from web_backend.core.errors import Conflict, TooManyRequests, Unprocessable
from web_backend.core.models import Job, JobStatus, User
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.settings import LimitSettings
from web_backend.core.storage import BlobStore
from web_backend.jobs import queue
from web_backend.jobs.eta import Throughput
from web_backend.jobs.schemas import JobRequest

__all__ = ["Submissions"]

_ACTIVE = (JobStatus.queued, JobStatus.running)


def _stored_request(request: JobRequest) -> dict[str, Any]:
    """The request as kept in the job row (what the ML side is asked: the webhook has
    columns of its own); the image prompt (stored apart) by its hash, so an
    Idempotency-Key retried with a different picture is a different request."""
    stored = request.model_dump(mode="json", exclude_none=True,
                                exclude={"image_prompt", "webhook_url", "webhook_events"})
    if request.image_prompt is not None:
        stored["image_prompt_sha256"] = hashlib.sha256(request.image_prompt).hexdigest()
    return stored


def _webhook(request: JobRequest) -> tuple[str | None, list[str] | None]:
    if request.webhook_url is None:
        return None, None
    return request.webhook_url, list(request.webhook_events)


def _replay(session: Session, user: User, key: str, request: JobRequest,
            stored: dict[str, Any]) -> Job | None:
    existing = session.scalar(select(Job).where(Job.user_id == user.id,
                                                Job.idempotency_key == key))
    if existing is not None and (existing.request != stored or
                                 (existing.webhook_url, existing.webhook_events)
                                 != _webhook(request)):
        raise Conflict("this Idempotency-Key was used for a different request; use a new key "
                       "for a new job")
    return existing


class Submissions:
    """New jobs under the account's limits; what it needs, given once per app."""

    def __init__(self, *,
                 limiter:    RateLimiter,     # submissions per minute
                 defaults:   LimitSettings,   # limits of accounts without their own
                 storage:    BlobStore,       # where image prompts go
                 throughput: Throughput,      # Retry-After of the active-jobs limit
                 ) -> None:
        self.limiter = limiter
        self.defaults = defaults
        self.storage = storage
        self.throughput = throughput

    def count(self, user: User) -> None:
        """Count one submission against the account's per-minute limit (429 beyond)."""
        per_minute = limits_for(user, self.defaults).submissions_per_minute
        rate = self.limiter.hit("submit", str(user.id), limit=per_minute)
        if not rate.allowed:
            raise rate.refusal(f"at most {per_minute} submissions per minute; try again in "
                               f"{rate.reset_after_s} s")

    def _check_limits(self, session: Session, user: User, *, counted: bool) -> None:
        limits = limits_for(user, self.defaults)
        if not counted:
            self.count(user)
        active = session.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user.id, Job.status.in_(_ACTIVE))) or 0
        if active >= limits.max_active_jobs:
            raise TooManyRequests(
                f"you already have {active} jobs queued or running (limit "
                f"{limits.max_active_jobs}); wait for one to finish or cancel one",
                retry_after_s=math.ceil(self.throughput.average_job_seconds(session)))
        day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        today = session.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user.id, Job.created_at >= day_start,
            Job.status != JobStatus.failed)) or 0
        if today >= limits.daily_images:
            until_midnight = (day_start + timedelta(days=1) - datetime.now(UTC)).total_seconds()
            raise TooManyRequests(f"daily quota of {limits.daily_images} images reached; it "
                                  "resets at 00:00 UTC", retry_after_s=math.ceil(until_midnight))

    def submit(self, session: Session, user: User, request: JobRequest,
               idempotency_key: str | None, *, counted: bool = False) -> tuple[Job, bool]:
        """Queue a job, or return the earlier one for a retried Idempotency-Key.

        Returns (job, replayed). Limits apply only to new jobs: a retry is not a new
        submission. ``counted``: the caller already counted it (:meth:`count`, before
        checking its webhook's URL, which resolves names).
        """
        stored = _stored_request(request)
        if idempotency_key is not None:
            existing = _replay(session, user, idempotency_key, request, stored)
            if existing is not None:
                return existing, True
        if request.webhook_url is not None and not user.webhook_secret:
            raise Conflict("a webhook needs your webhook secret to sign it: create one with "
                           "POST /v1/users/me/webhook-secret, then submit again")
        self._check_limits(session, user, counted=counted)
        image_key = None
        if request.image_prompt is not None:
            try:  # decoded and reduced here, once: the ML side gets a small square PNG
                image = image_prompts.normalize(request.image_prompt)
            except image_prompts.ImagePromptError as exc:
                raise Unprocessable(str(exc)) from None
            image_key = self.storage.put(image, suffix=".png")
        webhook_url, webhook_events = _webhook(request)
        try:
            job = queue.enqueue(session, user_id=user.id, request=stored,
                                image_prompt_key=image_key, idempotency_key=idempotency_key,
                                progress_total=0 if request.is_sample else request.steps,
                                webhook_url=webhook_url, webhook_events=webhook_events)
        except IntegrityError:  # the same key raced in from a parallel retry
            session.rollback()
            existing = (_replay(session, user, idempotency_key, request, stored)
                        if idempotency_key else None)
            if existing is None:
                raise
            return existing, True
        return job, False
