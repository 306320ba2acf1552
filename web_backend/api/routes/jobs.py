"""Submit, follow, download and cancel jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ml_backend.text import line_safe_json
from web_backend.api.deps import (
    AccessClaimsDep,
    JobId,
    JobsReader,
    OwnedJob,
    ServicesDep,
    SessionDep,
    StreamAccess,
    StreamAccessDep,
    check_live_login,
    job_by_token_or_link,
    owned_job,
    require_scope,
)
from web_backend.api.openapi import EVENT_STREAM, JOB_SUBMISSION, PNG, refusals
from web_backend.api.submission import Submission, check_webhook_url
from web_backend.core.errors import Conflict, NotFound, ServiceUnavailable, Unauthorized
from web_backend.core.models import Job, JobStatus, User
from web_backend.core.security import AccessClaims
from web_backend.jobs import queue, removal
from web_backend.jobs.schemas import JobOut, JobPage
from web_backend.live.feed import JobView, Watch
from web_backend.live.kept_views import KeptView
from web_backend.services import Services
from web_backend.storage.blobs import BlobMissing

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

SSE_HEARTBEAT_S = 15.0
FIRST_READ_TIMEOUT_S = 5.0


@router.post("", status_code=202, response_model=JobOut, openapi_extra=JOB_SUBMISSION,
             responses=refusals(401, 403, 409, 415, 422, 429, described={
                 409: "This Idempotency-Key was used for a different request.",
                 429: "Submissions per minute, active jobs or the daily quota reached."}))
async def submit(body: Submission, request: Request, claims: AccessClaimsDep,
                 services: ServicesDep,
                 idempotency_key: Annotated[str | None, Header(
                     min_length=1, max_length=128,
                     description="Retrying with the same key returns the same job.")] = None,
                 ) -> Response:
    """Queue a picture (JSON, or multipart with an image file); 202 with its place in line.

    No thread hop and no query of its own on the way in (the login from this process's
    cache); the jobs are written by the next batch (``jobs.submit``), and the 202 is
    built from what that batch read.
    """
    require_scope(claims, "jobs:write")
    await check_live_login(services, claims)
    counted = False
    if body.webhook_url is not None:  # a name lookup only for a caller known and counted
        user = await run_in_threadpool(_user, services, claims.user_id)
        await run_in_threadpool(services.submissions.count, user, body.n)
        await check_webhook_url(services, body.webhook_url, owner=user.id)
        counted = True
    admitted = await services.submissions.submit(claims.user_id, body, idempotency_key,
                                                 counted=counted, key_id=claims.key_id,
                                                 key_per_minute=claims.per_minute)
    batch = admitted.ids if len(admitted.ids) > 1 else None
    headers = {"Idempotent-Replayed": "true"} if admitted.replayed else {}
    if isinstance(admitted.first, Job):  # an earlier job, as it is now (it may have moved on)
        out = await run_in_threadpool(_view, services, admitted.first, batch)
    else:
        if (dispatcher := request.app.state.dispatcher) is not None:
            dispatcher.wake()  # start it now rather than at the next poll
        out = services.job_viewer.queued(admitted.first, number=admitted.number or 0,
                                         head=admitted.head, average_s=admitted.average_s,
                                         batch=batch)
    return Response(out.model_dump_json(), status_code=202, media_type="application/json",
                    headers=headers)


def _user(services: Services, user_id: int) -> User:
    with services.session_factory() as session:
        user = session.get(User, user_id)
    if user is None:
        raise Unauthorized("this session has ended; sign in again")
    return user


def _view(services: Services, job: Job, batch: list[str] | None) -> JobOut:
    with services.session_factory() as session:
        return services.job_viewer.out(session, session.merge(job, load=True), batch=batch)


@router.get("", name="list", response_model=JobPage, responses=refusals(400, 401, 403))
def list_jobs(
    user: JobsReader, session: SessionDep, services: ServicesDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    """Your jobs, newest first, a page at a time."""
    return services.job_viewer.page(session, user, status=status, limit=limit, cursor=cursor)


@router.get("/{job_id}", name="get", response_model=JobOut, responses=refusals(401, 403, 404))
async def get_job(job_id: JobId, claims: AccessClaimsDep, services: ServicesDep) -> Response:
    """A job's status, progress, timings, error and signed links."""
    require_scope(claims, "jobs:read")
    body = _kept_job_json(services, claims, job_id)
    if body is None:
        body = await run_in_threadpool(_job_json, services, claims, job_id)
    return Response(body, media_type="application/json")


def _kept_job_json(services: Services, claims: AccessClaims, job_id: str) -> bytes | None:
    """A job whose view this process keeps, read by a login it checked: no query and no
    thread hop (None: ask the database)."""
    if not services.logins.live(claims.session_id, claims.user_id):
        return None
    kept = services.views.get(job_id)
    if kept is None:
        return None
    if kept.owner_id != claims.user_id:  # as the database would answer: like a missing job
        raise NotFound(f"no job {job_id}")
    return _with_links(services, kept)


def _with_links(services: Services, kept: KeptView) -> bytes:
    links = services.job_viewer.signed_links(kept.job_id, image=kept.has_image,
                                             preview=kept.has_preview, not_after=None)
    return kept.body(json.dumps(links, separators=(",", ":")).encode())


def _job_json(services: Services, claims: AccessClaims, job_id: str) -> bytes:
    """One thread hop, one query for login and job (more only for what the job needs:
    the queue position of a queued one, the deliveries of its webhook), serialised once.
    Fills the login cache and the kept views."""
    read_at = services.views.generation()  # before the query: a change heard since wins
    with services.session_factory() as session:
        job = owned_job(session, claims, job_id, services.logins)
        out, owner_id = services.job_viewer.out(session, job), job.user_id
    kept = services.views.put(owner_id, out, read_at=read_at)
    if kept is not None:  # serialised once, into the kept view
        return _with_links(services, kept)
    return out.model_dump_json().encode()


@router.delete("/{job_id}", response_model=JobOut, responses=refusals(401, 403, 404))
async def cancel(job: OwnedJob, session: SessionDep, services: ServicesDep,
                 cancel_only: Annotated[bool, Query(description=(
                     "Only cancel: a job that has already ended is left as it is (and "
                     "answered as it is). For clients that cancel on a timeout and must not "
                     "delete a picture that finished meanwhile."))] = False) -> JobOut:
    """Cancel an active job (idempotent: a queued one at once, a running one within a
    search step); delete one that has ended, with its picture, previews and image
    prompt (its links stop working)."""
    if job.status.active or cancel_only:
        return await run_in_threadpool(
            lambda: services.job_viewer.out(session, queue.cancel(session, job=job)))
    out = await run_in_threadpool(services.job_viewer.out, session, job)
    deleted, released = await run_in_threadpool(removal.delete_finished, session, [job.id])
    if not deleted:  # it was deleted meanwhile (another request, the retention sweeper)
        raise NotFound(f"no job {job.id}")
    await services.blobs.collect(released)
    return out.model_copy(update={"deleted": True, "image_url": None, "preview_url": None})


async def _file_response(request: Request, services: Services, key: str | None, what: str,
                         job: Job) -> Response:
    """The blob's bytes through this process (the bucket stays private, and a deleted
    picture's link stops working at once), read whole within the store's deadline
    (a store that is down or slow: 503 with Retry-After)."""
    if key is None:
        missing = NotFound if what == "preview" else Conflict
        raise missing(f"job {job.id} has no {what} yet (status: {job.status})")
    etag = f'"{key.partition(".")[0]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        data = await services.blobs.get(key)
    except BlobMissing:  # deleted between the job's read and this one
        raise NotFound(f"the {what} of job {job.id} is gone") from None
    return Response(data, media_type="image/png", headers=headers)


@router.get("/{job_id}/image", response_class=Response, responses={
    **PNG, 304: {"description": "Unchanged since the ETag sent in If-None-Match."},
    **refusals(401, 403, 404, 409, 503, described={
        409: "The job has not succeeded (yet).",
        503: "The picture store is unavailable for the moment."})})
async def image(request: Request, services: ServicesDep,
                job: Annotated[Job, job_by_token_or_link("image")]) -> Response:
    """The finished PNG: the owner's bearer token, or the signed ``image_url``."""
    return await _file_response(request, services, job.result_key, "image", job)


@router.get("/{job_id}/preview", response_class=Response, responses={
    **PNG, 304: {"description": "Unchanged since the ETag sent in If-None-Match."},
    **refusals(401, 403, 404, 503, described={
        404: "No such job, or no preview yet.",
        503: "The picture store is unavailable for the moment."})})
async def preview(request: Request, services: ServicesDep,
                  job: Annotated[Job, job_by_token_or_link("preview")]) -> Response:
    """The latest preview PNG of a running job."""
    return await _file_response(request, services, job.preview_key, "preview", job)


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={
    **EVENT_STREAM, **refusals(401, 403, 404, 429, 503, described={
        429: "Too many open streams for this account or this server."})})
async def events(access: StreamAccessDep, services: ServicesDep,
                 last_event_id: Annotated[int | None, Header(
                     ge=0, le=2**31, description=(
                         "Sent by browsers when they reconnect: the `id` of the last event "
                         "received. Progress at or below it is not sent again."))] = None,
                 ) -> StreamingResponse:
    """Live server-sent events ``status``, ``progress``, ``preview``, then ``done``.

    Each event's ``id`` is the job's progress step. A stream starts with a ``status``
    event carrying the whole job, and costs the server nothing while the job is idle.
    """
    watch = services.feed.subscribe(access.job_id, viewer=access.user_id)
    try:
        try:
            view = await asyncio.wait_for(watch.ready(), FIRST_READ_TIMEOUT_S)
        except TimeoutError:
            raise ServiceUnavailable("the database is not answering; retry shortly",
                                     retry_after_s=5) from None
        if view is None:
            raise NotFound(f"no job {access.job_id}")
        access.check(view.owner_id, view.owner_active)
        release = services.streams.admit(view.owner_id)  # 429 before the response starts
    except BaseException:
        watch.close()
        raise
    events = _job_events(services, watch, access, last_event_id, release)
    weakref.finalize(events, release)  # a stream never started still gives its place back
    weakref.finalize(events, watch.close)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(name: str, out: JobOut) -> str:
    """One event; its ``data`` is one line for any line reader (``line_safe_json``)."""
    return (f"id: {out.progress.step}\nevent: {name}\n"
            f"data: {line_safe_json(out.model_dump_json())}\n\n")


async def _still_allowed(services: Services, watch: Watch, access: StreamAccess,
                         view: JobView) -> bool:
    """Whether the credential that opened the stream still opens it: its login was not
    ended (checked again whenever the feed says the viewer's logins changed) and the
    job's owner is not disabled (a signed link opens nothing then)."""
    if not view.owner_active:
        return False
    if watch.login_changed and access.claims is not None:
        watch.login_changed = False
        try:
            await check_live_login(services, access.claims)
        except Exception:  # ended, disabled, or the database cannot say: end the stream
            return False
    return True


async def _job_events(services: Services, watch: Watch, access: StreamAccess,
                      last_event_id: int | None, release: Callable[[], None],
                      ) -> AsyncIterator[str]:
    """Ends when the job does, the client leaves (Starlette cancels it), the credential
    that opened it expires (the page then asks for a fresh link) or stops opening it (a
    logout, a password change, a disable, on any worker: no event or link after it), or
    the server stops."""
    expires_at = access.expires_at
    try:
        shown: JobView | None = None
        floor = -1 if last_event_id is None else last_event_id  # progress already sent
        beat = time.monotonic()
        while not (services.feed.closing or services.streams.closing):
            watch.changed.clear()
            view = watch.view
            if view is None:  # deleted with its account
                yield "event: done\ndata: {}\n\n"
                return
            if not await _still_allowed(services, watch, access, view):
                return
            if view is not shown:
                out = services.job_viewer.relinked(view.out, expires_at)
                step, sent = out.progress.step, []
                if shown is None or shown.out.status != out.status:
                    sent.append(_event("status", out))  # the whole job, progress included
                    floor = max(step, floor) if shown is None else step
                elif step > floor:
                    sent.append(_event("progress", out))
                    floor = step
                if view.preview_key is not None and \
                        (shown is None or shown.preview_key != view.preview_key):
                    sent.append(_event("preview", out))
                if JobStatus(out.status).terminal:
                    yield "".join([*sent, _event("done", out)])
                    return
                shown = view
                if sent:
                    yield "".join(sent)
                    beat = time.monotonic()
            if time.time() >= expires_at:
                return
            wait_s = min(beat + SSE_HEARTBEAT_S - time.monotonic(), expires_at - time.time())
            if wait_s <= 0:
                yield ": keep-alive\n\n"
                beat = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), wait_s)
    finally:
        watch.close()
        release()  # the stream's place under the caps, however it ended
