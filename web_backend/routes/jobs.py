"""Submit, follow, download and cancel jobs."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from web_backend import jobs, queue
from web_backend.deps import CurrentUser, OwnedJob, ServicesDep, SessionDep, job_by_token_or_link
from web_backend.errors import Conflict, NotFound
from web_backend.models import Job, JobStatus
from web_backend.openapi import EVENT_STREAM, JOB_SUBMISSION, PNG, refusals
from web_backend.schemas import JobOut, JobPage
from web_backend.services import Services
from web_backend.submission import Submission

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

SSE_POLL_S = 0.5
SSE_HEARTBEAT_S = 15.0


@router.post("", status_code=202, response_model=JobOut, openapi_extra=JOB_SUBMISSION,
             responses=refusals(401, 403, 409, 415, 422, 429, described={
                 409: "This Idempotency-Key was used for a different request.",
                 429: "Submissions per minute, active jobs or the daily quota reached."}))
def submit(body: Submission, request: Request, response: Response, user: CurrentUser,
               session: SessionDep, services: ServicesDep,
               idempotency_key: Annotated[str | None, Header(
                   min_length=1, max_length=128,
                   description="Retrying with the same key returns the same job.")] = None,
               ) -> JobOut:
    """Queue a picture (JSON, or multipart with an image file); 202 with its place in line."""
    job, replayed = jobs.submit(session, services, user, body, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    elif (dispatcher := request.app.state.dispatcher) is not None:
        dispatcher.wake()  # start it now rather than at the next poll
    return jobs.job_out(session, services, job)


@router.get("", name="list", response_model=JobPage, responses=refusals(400, 401, 403))
def list_jobs(
    user: CurrentUser, session: SessionDep, services: ServicesDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    """Your jobs, newest first, a page at a time."""
    return jobs.list_jobs(session, services, user, status=status, limit=limit, cursor=cursor)


@router.get("/{job_id}", name="get", response_model=JobOut, responses=refusals(401, 403, 404))
def get_job(job: OwnedJob, session: SessionDep, services: ServicesDep) -> JobOut:
    """A job's status, progress, timings, error and signed links."""
    return jobs.job_out(session, services, job)


@router.delete("/{job_id}", response_model=JobOut, responses=refusals(401, 403, 404))
def cancel(job: OwnedJob, session: SessionDep, services: ServicesDep) -> JobOut:
    """Cancel (idempotent): a queued job at once, a running one within a search step."""
    return jobs.job_out(session, services, queue.cancel(session, job=job))


def _file_response(request: Request, services: Services, key: str | None, what: str,
                   job: Job) -> Response:
    if key is None:
        missing = NotFound if what == "preview" else Conflict
        raise missing(f"job {job.id} has no {what} yet (status: {job.status})")
    etag = f'"{key.partition(".")[0]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(services.storage.get(key), media_type="image/png", headers=headers)


@router.get("/{job_id}/image", response_class=Response, responses={
    **PNG, 304: {"description": "Unchanged since the ETag sent in If-None-Match."},
    **refusals(401, 403, 404, 409, described={409: "The job has not succeeded (yet)."})})
def image(request: Request, services: ServicesDep,
          job: Annotated[Job, job_by_token_or_link("image")]) -> Response:
    """The finished PNG: the owner's bearer token, or the signed ``image_url``."""
    return _file_response(request, services, job.result_key, "image", job)


@router.get("/{job_id}/preview", response_class=Response, responses={
    **PNG, 304: {"description": "Unchanged since the ETag sent in If-None-Match."},
    **refusals(401, 403, 404, described={404: "No such job, or no preview yet."})})
def preview(request: Request, services: ServicesDep,
            job: Annotated[Job, job_by_token_or_link("preview")]) -> Response:
    """The latest preview PNG of a running job."""
    return _file_response(request, services, job.preview_key, "preview", job)


def _snapshot(services: Services, job_id: str, links_not_after: int,
              ) -> tuple[JobOut, str | None] | None:
    """The job as the client sees it, plus its preview's key (signed URLs change each call)."""
    with services.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return jobs.job_out(session, services, job, links_not_after=links_not_after), \
            job.preview_key


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={
    **EVENT_STREAM, **refusals(401, 403, 404, 429, described={
        429: "Too many open streams for this account or this server."})})
async def events(request: Request, services: ServicesDep,
                 job: Annotated[Job, job_by_token_or_link("events")]) -> StreamingResponse:
    """Live server-sent events ``status``, ``progress``, ``preview``, then ``done``."""
    release = services.streams.admit(job.user_id)  # 429 here, before the response starts
    events = _job_events(request, services, job.id, request.state.credential_expires_at,
                         release)
    weakref.finalize(events, release)  # a stream never started still gives its place back
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _job_events(request: Request, services: Services, job_id: str, expires_at: int,
                      release: Callable[[], None]) -> AsyncIterator[str]:
    try:
        seen: dict[str, Any] = {}
        beat = time.monotonic()
        # Ends when the job does, the client leaves, the credential that opened it
        # expires (the page then asks for a fresh link) or the server is stopping.
        while not await request.is_disconnected() and time.time() < expires_at \
                and not services.streams.closing:
            snapshot = await run_in_threadpool(_snapshot, services, job_id, expires_at)
            if snapshot is None:
                yield "event: done\ndata: {}\n\n"
                return
            out, preview_key = snapshot
            data = out.model_dump_json()
            changes = {"status": out.status, "progress": out.progress.step,
                       "preview": preview_key}
            if not seen:  # the first status event carries the whole job, progress included
                seen["progress"] = out.progress.step
            for name, value in changes.items():
                if seen.get(name, ...) != value:
                    seen[name] = value
                    if value is not None:
                        yield f"event: {name}\ndata: {data}\n\n"
                        beat = time.monotonic()
            if JobStatus(out.status).terminal:
                yield f"event: done\ndata: {data}\n\n"
                return
            if time.monotonic() - beat > SSE_HEARTBEAT_S:
                yield ": keep-alive\n\n"
                beat = time.monotonic()
            await asyncio.sleep(SSE_POLL_S)
    finally:
        release()  # the stream's place under the caps, however it ended
