"""What users do with jobs: submit (limits, idempotency), list, and see them.

Status changes themselves are :mod:`web_backend.queue`'s; this module decides whether
a submission is allowed and how a job looks to its owner.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ml_backend import image_prompts
from web_backend import queue
from web_backend.accounts import limits_for
from web_backend.errors import BadRequest, Conflict, TooManyRequests, Unprocessable
from web_backend.models import Job, JobStatus, User, WebhookDelivery
from web_backend.schemas import (
    JobOut,
    JobPage,
    JobRequest,
    Progress,
    WebhookDeliveryOut,
    WebhookOut,
)
from web_backend.security import sign_link
from web_backend.services import Services
from web_backend.webhook_outbox import deliveries_for

__all__ = ["average_job_seconds", "job_columns", "job_out", "job_views", "list_jobs",
           "relinked", "signed_links", "submit"]

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


_AVERAGE_TTL_S = 5.0


def average_job_seconds(session: Session, services: Services) -> float:
    """Mean run time of the last 50 finished jobs (the ETA's unit), read at most every
    few seconds per process: every status read of an active job needs it, and it moves
    only when a job finishes (an ETA a few seconds behind is still an estimate)."""
    cached = services.average_job_s
    if cached is not None and time.monotonic() - cached[1] < _AVERAGE_TTL_S:
        return cached[0]
    average = _average_job_seconds(session, services)
    services.average_job_s = (average, time.monotonic())
    return average


def _average_job_seconds(session: Session, services: Services) -> float:
    rows = session.execute(
        select(Job.started_at, Job.finished_at).where(Job.status == JobStatus.succeeded,
                                                      Job.started_at.is_not(None))
        .order_by(Job.finished_at.desc()).limit(50)).all()
    durations = [(f - s).total_seconds() for s, f in rows if s and f]
    if not durations:
        return services.settings.ml.default_job_seconds
    return sum(durations) / len(durations)


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


def _check_limits(session: Session, services: Services, user: User) -> None:
    limits = limits_for(user, services.settings.limits)
    rate = services.limiter.hit("submit", str(user.id), limit=limits.submissions_per_minute)
    if not rate.allowed:
        raise rate.refusal(f"at most {limits.submissions_per_minute} submissions per minute; "
                           f"try again in {rate.reset_after_s} s")
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user.id, Job.status.in_(_ACTIVE))) or 0
    if active >= limits.max_active_jobs:
        raise TooManyRequests(
            f"you already have {active} jobs queued or running (limit "
            f"{limits.max_active_jobs}); wait for one to finish or cancel one",
            retry_after_s=math.ceil(average_job_seconds(session, services)))
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    today = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user.id, Job.created_at >= day_start,
        Job.status != JobStatus.failed)) or 0
    if today >= limits.daily_images:
        until_midnight = (day_start + timedelta(days=1) - datetime.now(UTC)).total_seconds()
        raise TooManyRequests(f"daily quota of {limits.daily_images} images reached; it resets "
                              "at 00:00 UTC", retry_after_s=math.ceil(until_midnight))


def submit(session: Session, services: Services, user: User, request: JobRequest,
           idempotency_key: str | None) -> tuple[Job, bool]:
    """Queue a job, or return the earlier one for a retried Idempotency-Key.

    Returns (job, replayed). Limits apply only to new jobs: a retry is not a new
    submission. A webhook's URL is checked by the caller (it resolves names).
    """
    stored = _stored_request(request)
    if idempotency_key is not None:
        existing = _replay(session, user, idempotency_key, request, stored)
        if existing is not None:
            return existing, True
    if request.webhook_url is not None and not user.webhook_secret:
        raise Conflict("a webhook needs your webhook secret to sign it: create one with "
                       "POST /v1/users/me/webhook-secret, then submit again")
    _check_limits(session, services, user)
    image_key = None
    if request.image_prompt is not None:
        try:  # decoded and reduced here, once: the ML side gets a small square PNG
            image = image_prompts.normalize(request.image_prompt)
        except image_prompts.ImagePromptError as exc:
            raise Unprocessable(str(exc)) from None
        image_key = services.storage.put(image, suffix=".png")
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


def _link(services: Services, job_id: str, kind: str, not_after: int | None) -> str:
    expires = int(time.time()) + services.settings.auth.signed_url_ttl_s
    if not_after is not None:
        expires = min(expires, not_after)
    sig = sign_link(services.signing_key, job_id, kind, expires)
    return f"/v1/jobs/{job_id}/{kind}?exp={expires}&sig={sig}"


def _webhook_out(job: Job, deliveries: list[WebhookDelivery]) -> WebhookOut | None:
    if job.webhook_url is None:
        return None
    return WebhookOut(url=job.webhook_url, events=job.webhook_events or [], deliveries=[
        WebhookDeliveryOut(id=d.id, event=d.event, status=d.status, attempts=d.attempts,
                           last_error=d.last_error, delivered_at=d.delivered_at)
        for d in deliveries])


def job_out(session: Session, services: Services, job: Job, *,
            average_s: float | None = None, links_not_after: int | None = None,
            deliveries: list[WebhookDelivery] | None = None) -> JobOut:
    """``average_s``: the ETA unit, when the caller already has it (one query per page).
    ``links_not_after``: signed links expire no later than this (a stream's credential).
    ``deliveries``: the job's webhook deliveries, when the caller read them for a batch."""
    position = eta = None
    if job.webhook_url is not None and deliveries is None:
        deliveries = deliveries_for(session, (job.id,)).get(job.id, [])
    if job.status in _ACTIVE and average_s is None:
        average_s = average_job_seconds(session, services)
    if job.status is JobStatus.queued and average_s is not None:
        ahead = session.scalar(select(func.count()).select_from(Job).where(
            Job.status == JobStatus.queued,
            or_(Job.created_at < job.created_at,
                and_(Job.created_at == job.created_at, Job.id < job.id)))) or 0
        position = ahead + 1
        eta = average_s * (1 + ahead // services.ml_capacity)
    elif job.status is JobStatus.running and average_s is not None:
        done = job.progress_step / job.progress_total if job.progress_total else 0.0
        eta = average_s * (1 - done)
    return JobOut(
        id=job.id, status=job.status, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, request=job.request,
        progress=Progress(step=job.progress_step, total=job.progress_total, score=job.score),
        queue_position=position, eta_s=eta, seed=job.seed, error=job.error, timings=job.timings,
        image_url=_link(services, job.id, "image", links_not_after) if job.result_key else None,
        preview_url=(_link(services, job.id, "preview", links_not_after) if job.preview_key
                     else None),
        events_url=_link(services, job.id, "events", links_not_after),
        webhook=_webhook_out(job, deliveries or []),
    )


def signed_links(services: Services, job_id: str, *, image: bool, preview: bool,
                 not_after: int | None) -> dict[str, str | None]:
    """A job view's signed links, made fresh (each expires at the usual TTL, and no later
    than ``not_after``): one view serves many readers, each with a credential of its own."""
    return {"image_url": _link(services, job_id, "image", not_after) if image else None,
            "preview_url": _link(services, job_id, "preview", not_after) if preview else None,
            "events_url": _link(services, job_id, "events", not_after)}


def relinked(services: Services, out: JobOut, links_not_after: int | None) -> JobOut:
    """``out`` with its signed links re-made to expire no later than ``links_not_after``:
    one view is built per change for all of a job's streams, each opened by a credential
    of its own."""
    return out.model_copy(update=signed_links(
        services, out.id, image=out.image_url is not None,
        preview=out.preview_url is not None, not_after=links_not_after))


JobViewRow = tuple[JobOut, str | None, int, bool]  # the job, its preview, owner, owner active


def job_views(session: Session, services: Services, job_ids: frozenset[str],
              ) -> dict[str, JobViewRow | None]:
    """Several jobs as their owner sees them, with their owner's standing, in one query
    (plus one for the ETA unit when any is active): the change feed reads every job that
    changed in a batch this way. A job that does not exist (any more) maps to None."""
    found = session.execute(select(Job, User.is_active).join(User, User.id == Job.user_id)
                            .where(Job.id.in_(job_ids))).all()
    average_s = (average_job_seconds(session, services)
                 if any(job.status in _ACTIVE for job, _ in found) else None)
    deliveries = _deliveries(session, [job for job, _ in found])
    views: dict[str, JobViewRow | None] = dict.fromkeys(job_ids)
    for job, active in found:
        views[job.id] = (job_out(session, services, job, average_s=average_s,
                                 deliveries=deliveries.get(job.id, [])),
                         job.preview_key, job.user_id, active)
    return views


def _deliveries(session: Session, jobs: list[Job]) -> dict[str, list[WebhookDelivery]]:
    """Webhook deliveries of the jobs that have a webhook, one query for all (or none)."""
    with_webhook = [job.id for job in jobs if job.webhook_url is not None]
    return deliveries_for(session, with_webhook) if with_webhook else {}


def job_columns(session: Session, job_ids: frozenset[str]) -> list[tuple[Any, ...]]:
    """What an event stream shows of each job, straight from the columns (no view built):
    (id, status, progress step, total, score, preview key, has image, error)."""
    return [tuple(row) for row in session.execute(
        select(Job.id, Job.status, Job.progress_step, Job.progress_total, Job.score,
               Job.preview_key, Job.result_key.is_not(None), Job.error)
        .where(Job.id.in_(job_ids)))]


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("invalid cursor: pass next_cursor from the previous page") from None


def list_jobs(session: Session, services: Services, user: User, *, status: JobStatus | None,
              limit: int, cursor: str | None) -> JobPage:
    """The user's jobs, newest first, one page."""
    query = select(Job).where(Job.user_id == user.id)
    if status:
        query = query.where(Job.status == status)
    if cursor:
        created, job_id = _decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created,
                                and_(Job.created_at == created, Job.id < job_id)))
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())
                                .limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    average_s = (average_job_seconds(session, services)
                 if any(j.status in _ACTIVE for j in jobs) else None)
    deliveries = _deliveries(session, jobs)
    return JobPage(items=[job_out(session, services, j, average_s=average_s,
                                  deliveries=deliveries.get(j.id, [])) for j in jobs],
                   next_cursor=_encode_cursor(jobs[-1]) if more and jobs else None)
