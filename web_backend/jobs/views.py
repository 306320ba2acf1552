"""How a job looks to its owner: its view, its signed links, its place in line, pages.

:class:`JobViewer` holds what a view needs (the key that signs links and their
lifetime, and the queue's :class:`~web_backend.jobs.eta.Throughput`) so that routes,
the change feed and the webhook sender build views the same way.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from web_backend.core.errors import BadRequest
from web_backend.core.models import Job, JobStatus, User, WebhookDelivery
from web_backend.core.security import sign_link
from web_backend.jobs.eta import Throughput
from web_backend.jobs.queue import NewJob
from web_backend.jobs.queue import head as queue_head
from web_backend.jobs.schemas import JobOut, JobPage, Progress
from web_backend.webhooks.outbox import deliveries_for
from web_backend.webhooks.schemas import WebhookDeliveryOut, WebhookOut

__all__ = ["JobViewRow", "JobViewer", "job_columns"]

_ACTIVE = (JobStatus.queued, JobStatus.running)

JobViewRow = tuple[JobOut, str | None, int, bool]  # the job, its preview, owner, owner active


def _webhook_out(job: Job, deliveries: list[WebhookDelivery]) -> WebhookOut | None:
    if job.webhook_url is None:
        return None
    return WebhookOut(url=job.webhook_url, events=job.webhook_events or [], deliveries=[
        WebhookDeliveryOut(id=d.id, event=d.event, status=d.status, attempts=d.attempts,
                           last_error=d.last_error, delivered_at=d.delivered_at)
        for d in deliveries])


def _deliveries(session: Session, jobs: Iterable[Job]) -> dict[str, list[WebhookDelivery]]:
    """Webhook deliveries of the jobs that have a webhook, one query for all (or none)."""
    with_webhook = [job.id for job in jobs if job.webhook_url is not None]
    return deliveries_for(session, with_webhook) if with_webhook else {}


def _seconds_since(moment: datetime | None) -> float:
    """Seconds from ``moment`` (stored UTC; naive where the database drops the zone)."""
    if moment is None:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())


def _needed(session: Session | None) -> Session:
    if session is None:
        raise ValueError("this view needs a database read: give a session")
    return session


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


def job_columns(session: Session, job_ids: frozenset[str]) -> list[tuple[Any, ...]]:
    """What an event stream shows of each job, straight from the columns (no view built):
    (id, status, progress step, total, score, preview key, has image, error)."""
    return [tuple(row) for row in session.execute(
        select(Job.id, Job.status, Job.progress_step, Job.progress_total, Job.score,
               Job.preview_key, Job.result_key.is_not(None), Job.error)
        .where(Job.id.in_(job_ids)))]


class JobViewer:
    """Builds :class:`JobOut` views, with links signed by ``signing_key``."""

    def __init__(self, *,
                 signing_key: bytes,        # signs image, preview and event links
                 link_ttl_s:  int,          # how long a link works
                 throughput:  Throughput,   # the ETA's inputs
                 ) -> None:
        self.signing_key = signing_key
        self.link_ttl_s = link_ttl_s
        self.throughput = throughput

    def _link(self, job_id: str, kind: str, not_after: int | None) -> str:
        expires = int(time.time()) + self.link_ttl_s
        if not_after is not None:
            expires = min(expires, not_after)
        sig = sign_link(self.signing_key, job_id, kind, expires)
        return f"/v1/jobs/{job_id}/{kind}?exp={expires}&sig={sig}"

    def out(self, session: Session | None, job: Job, *, average_s: float | None = None,
            links_not_after: int | None = None,
            deliveries: list[WebhookDelivery] | None = None,
            head: int | None = None, batch: list[str] | None = None) -> JobOut:
        """``average_s``: the ETA unit, when the caller already has it (one query per page).
        ``links_not_after``: signed links expire no later than this (a stream's credential).
        ``deliveries``: the job's webhook deliveries, when the caller read them for a batch.
        ``head``: the queue's head number, when the caller read it. With all of these
        given, no ``session`` is needed (a new job's 202)."""
        position = eta = None
        starting = job.status in _ACTIVE and job.progress_step == 0 and self.throughput.at_zero
        if job.webhook_url is not None and deliveries is None:
            deliveries = deliveries_for(_needed(session), (job.id,)).get(job.id, [])
        if job.status in _ACTIVE and average_s is None:
            average_s = self.throughput.average_job_seconds(_needed(session))
        if job.status is JobStatus.queued and average_s is not None:
            if head is None:
                head = queue_head(_needed(session))
            ahead = max(0, (job.queue_seq or 0) - (head or job.queue_seq or 0))
            position = ahead + 1
            eta = self.throughput.queued_eta(average_s, ahead)
        elif job.status is JobStatus.running and average_s is not None:
            eta = self.throughput.running_eta(average_s, job.progress_step, job.progress_total)
        if starting and eta is not None:
            waited = (_seconds_since(job.started_at) if job.status is JobStatus.running
                      else 0.0)
            eta += self.throughput.starting_wait(waited)
        return JobOut(
            id=job.id, status=job.status, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, request=job.request,
            progress=Progress(step=job.progress_step, total=job.progress_total,
                              score=job.score),
            queue_position=position, eta_s=eta, starting_gpu=starting, seed=job.seed,
            error=job.error, timings=job.timings,
            image_url=(self._link(job.id, "image", links_not_after) if job.result_key
                       else None),
            preview_url=(self._link(job.id, "preview", links_not_after) if job.preview_key
                         else None),
            events_url=self._link(job.id, "events", links_not_after),
            webhook=_webhook_out(job, deliveries or []),
            batch=batch,
        )

    def queued(self, job: NewJob, *, number: int, head: int | None, average_s: float,
               batch: list[str] | None = None) -> JobOut:
        """A job just queued, as its 202 shows it: from what admission read (no query)."""
        ahead = max(0, number - (head or number))
        starting = self.throughput.at_zero
        eta = self.throughput.queued_eta(average_s, ahead)
        return JobOut(
            id=job.id, status=JobStatus.queued, created_at=job.created_at, started_at=None,
            finished_at=None, request=job.request,
            progress=Progress(step=0, total=job.progress_total, score=None),
            queue_position=ahead + 1, starting_gpu=starting,
            eta_s=eta + (self.throughput.starting_wait(0.0) if starting else 0.0),
            seed=None, error=None, timings=None, image_url=None, preview_url=None,
            events_url=self._link(job.id, "events", None),
            webhook=(WebhookOut(url=job.webhook_url, events=job.webhook_events or [],
                                deliveries=[]) if job.webhook_url is not None else None),
            batch=batch)

    def payload(self, session: Session, job: Job) -> dict[str, Any]:
        """The job as JSON-ready data (what a webhook carries)."""
        return self.out(session, job).model_dump(mode="json")

    def signed_links(self, job_id: str, *, image: bool, preview: bool,
                     not_after: int | None) -> dict[str, str | None]:
        """A job view's signed links, made fresh (each expires at the usual TTL, and no
        later than ``not_after``): one view serves many readers, each with a credential
        of its own."""
        return {"image_url": self._link(job_id, "image", not_after) if image else None,
                "preview_url": self._link(job_id, "preview", not_after) if preview else None,
                "events_url": self._link(job_id, "events", not_after)}

    def relinked(self, out: JobOut, links_not_after: int | None) -> JobOut:
        """``out`` with its signed links re-made to expire no later than
        ``links_not_after``: one view is built per change for all of a job's streams,
        each opened by a credential of its own."""
        return out.model_copy(update=self.signed_links(
            out.id, image=out.image_url is not None, preview=out.preview_url is not None,
            not_after=links_not_after))

    def views(self, session: Session, job_ids: frozenset[str],
              ) -> dict[str, JobViewRow | None]:
        """Several jobs as their owner sees them, with their owner's standing, in one
        query (plus one for the ETA unit when any is active): the change feed reads every
        job that changed in a batch this way. A job that does not exist (any more) maps
        to None."""
        found = session.execute(select(Job, User.is_active).join(User, User.id == Job.user_id)
                                .where(Job.id.in_(job_ids))).all()
        average_s = (self.throughput.average_job_seconds(session)
                     if any(job.status in _ACTIVE for job, _ in found) else None)
        deliveries = _deliveries(session, [job for job, _ in found])
        views: dict[str, JobViewRow | None] = dict.fromkeys(job_ids)
        for job, active in found:
            views[job.id] = (self.out(session, job, average_s=average_s,
                                      deliveries=deliveries.get(job.id, [])),
                             job.preview_key, job.user_id, active)
        return views

    def page(self, session: Session, user: User, *, status: JobStatus | None, limit: int,
             cursor: str | None) -> JobPage:
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
        average_s = (self.throughput.average_job_seconds(session)
                     if any(j.status in _ACTIVE for j in jobs) else None)
        deliveries = _deliveries(session, jobs)
        return JobPage(items=[self.out(session, j, average_s=average_s,
                                       deliveries=deliveries.get(j.id, [])) for j in jobs],
                       next_cursor=_encode_cursor(jobs[-1]) if more and jobs else None)
