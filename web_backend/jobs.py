"""Job submission, listing and presentation: the rules, kept out of the routes."""

from __future__ import annotations

import base64
import io
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ml_backend.protocol import GenerationRequest
from web_backend.models import ACTIVE_STATUSES, JOB_STATUSES, Job, User, utcnow
from web_backend.ratelimit import LimitResult
from web_backend.schemas import JobOut, JobPage, Limits, Progress
from web_backend.security import sign_link
from web_backend.services import Services


def limits_for(user: User, services: Services) -> Limits:
    s = services.settings
    return Limits(
        submissions_per_minute=user.submissions_per_minute or s.submissions_per_minute,
        max_active_jobs=user.max_active_jobs or s.max_active_jobs,
        daily_images=user.daily_images or s.daily_images,
    )


def too_many(message: str, result: LimitResult | None = None, retry_after: int = 60,
             ) -> HTTPException:
    headers = result.headers() if result else {"Retry-After": str(max(1, retry_after))}
    return HTTPException(429, message, headers=headers)


def check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(422, f"image_prompt is not a readable PNG/JPEG/WebP image "
                                 f"({type(exc).__name__})") from None


def _stored_request(request: GenerationRequest) -> dict[str, Any]:
    return request.model_dump(mode="json", exclude={"image_prompt"}, exclude_none=True)


def average_job_seconds(session: Session, services: Services) -> float:
    """Mean run time of the last 50 finished jobs (the ETA's unit)."""
    rows = session.execute(
        select(Job.started_at, Job.finished_at).where(Job.status == "succeeded",
                                                      Job.started_at.is_not(None))
        .order_by(Job.finished_at.desc()).limit(50)).all()
    durations = [(f - s).total_seconds() for s, f in rows if s and f]
    return sum(durations) / len(durations) if durations else services.settings.default_job_seconds


def create_job(session: Session, services: Services, user: User, request: GenerationRequest,
               idempotency_key: str | None) -> tuple[Job, bool]:
    """Insert a queued job, or return the earlier one for a retried Idempotency-Key.

    Returns (job, replayed). Limits apply only to new jobs: a retry is not a new
    submission.
    """
    stored = _stored_request(request)
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.user_id == user.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request != stored:
                raise HTTPException(409, "this Idempotency-Key was used for a different request; "
                                         "use a new key for a new job")
            return existing, True
    limits = limits_for(user, services)
    rate = services.limiter.hit("submit", str(user.id), limit=limits.submissions_per_minute)
    if not rate.allowed:
        raise too_many(f"at most {limits.submissions_per_minute} submissions per minute; "
                       f"try again in {rate.reset_after_s} s", rate)
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user.id, Job.status.in_(ACTIVE_STATUSES))) or 0
    if active >= limits.max_active_jobs:
        raise too_many(f"you already have {active} jobs queued or running (limit "
                       f"{limits.max_active_jobs}); wait for one to finish or cancel one",
                       retry_after=math.ceil(average_job_seconds(session, services)))
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    today = session.scalar(select(func.count()).select_from(Job).where(
        Job.user_id == user.id, Job.created_at >= day_start, Job.status != "failed")) or 0
    if today >= limits.daily_images:
        until_midnight = (day_start + timedelta(days=1) - datetime.now(UTC)).total_seconds()
        raise too_many(f"daily quota of {limits.daily_images} images reached; it resets at "
                       "00:00 UTC", retry_after=math.ceil(until_midnight))
    image_key = None
    if request.image_prompt is not None:
        check_image(request.image_prompt)
        image_key = services.storage.put(request.image_prompt, suffix=".img")
    job = Job(user_id=user.id, request=stored, image_prompt_key=image_key,
              idempotency_key=idempotency_key, progress_total=0 if request.is_sample
              else request.steps)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # the same key raced in from a parallel retry
        session.rollback()
        existing = session.scalar(select(Job).where(Job.user_id == user.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, True
    return job, False


def _link(services: Services, job: Job, kind: str, path: str) -> str:
    expires = int(time.time()) + services.settings.signed_url_ttl_s
    sig = sign_link(services.signing_key, job.id, kind, expires)
    return f"/v1/jobs/{job.id}/{path}?exp={expires}&sig={sig}"


def job_out(session: Session, services: Services, job: Job, *,
            average_s: float | None = None) -> JobOut:
    """``average_s``: the ETA unit, when the caller already has it (one query per page)."""
    position = eta = None
    if job.status in ("queued", "running") and average_s is None:
        average_s = average_job_seconds(session, services)
    if job.status == "queued":
        ahead = session.scalar(select(func.count()).select_from(Job).where(
            Job.status == "queued", or_(Job.created_at < job.created_at,
                                        and_(Job.created_at == job.created_at,
                                             Job.id < job.id)))) or 0
        position = ahead + 1
        slots = services.settings.ml_slots
        eta = average_s * (1 + ahead // slots)
    elif job.status == "running":
        done = job.progress_step / job.progress_total if job.progress_total else 0.0
        eta = average_s * (1 - done)
    return JobOut(
        id=job.id, status=job.status, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, request=job.request,
        progress=Progress(step=job.progress_step, total=job.progress_total, score=job.score),
        queue_position=position, eta_s=eta, seed=job.seed, error=job.error, timings=job.timings,
        image_url=_link(services, job, "image", "image") if job.result_key else None,
        preview_url=_link(services, job, "preview", "preview") if job.preview_key else None,
        events_url=_link(services, job, "events", "events"),
    )


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "invalid cursor: pass next_cursor from the previous page"
                            ) from None


def list_jobs(session: Session, services: Services, user: User, *, status: str | None,
              limit: int, cursor: str | None) -> JobPage:
    if status is not None and status not in JOB_STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(JOB_STATUSES)}")
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
                 if any(j.status in ("queued", "running") for j in jobs) else None)
    return JobPage(items=[job_out(session, services, j, average_s=average_s) for j in jobs],
                   next_cursor=_encode_cursor(jobs[-1]) if more and jobs else None)


def cancel_job(session: Session, job: Job) -> Job:
    """Idempotent: queued -> cancelled now; running -> flagged for the dispatcher."""
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = utcnow()
        job.error = "cancelled by the user"
    elif job.status == "running":
        job.cancel_requested = True
    session.commit()
    return job
