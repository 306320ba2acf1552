"""Submit, follow, download and cancel jobs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ml_backend.protocol import MAX_IMAGE_PROMPT_BYTES, GenerationRequest
from web_backend import jobs as job_rules
from web_backend.deps import CurrentUser, OwnedJob, ServicesDep, SessionDep, job_by_token_or_link
from web_backend.errors import validation_detail
from web_backend.models import Job, User
from web_backend.schemas import Detail, JobOut, JobPage
from web_backend.services import Services

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

TERMINAL = {"succeeded", "failed", "cancelled"}
MAX_BODY_BYTES = MAX_IMAGE_PROMPT_BYTES * 4 // 3 + 64 * 1024  # base64 image + the rest
SSE_POLL_S = 0.5
SSE_HEARTBEAT_S = 15.0

_SUBMIT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": GenerationRequest.model_json_schema(
                ref_template="#/components/schemas/{model}")},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "request": {"type": "string", "description": "the JSON request"},
                    "image_prompt": {"type": "string", "format": "binary"},
                },
                "required": ["request"],
            }},
        },
    },
}


async def _parse_submission(request: Request) -> GenerationRequest:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request too large; image prompts may be at most "
                                 f"{MAX_IMAGE_PROMPT_BYTES // (1024 * 1024)} MB")
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            raw = form.get("request")
            if not isinstance(raw, str):
                raise HTTPException(422, "multipart submissions need a 'request' field "
                                         "holding the JSON request")
            try:
                fields: Any = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise HTTPException(422, f"'request' is not valid JSON: {exc}") from None
            if not isinstance(fields, dict):
                raise HTTPException(422, "'request' must be a JSON object")
            upload = form.get("image_prompt")
            if isinstance(upload, UploadFile):
                data = await upload.read(MAX_IMAGE_PROMPT_BYTES + 1)
                if len(data) > MAX_IMAGE_PROMPT_BYTES:
                    raise HTTPException(413, "image_prompt is larger than 10 MB")
                fields["image_prompt"] = data
            return GenerationRequest.model_validate(fields)
        if content_type.startswith("application/json") or not content_type:
            return GenerationRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc)) from None
    raise HTTPException(415, "send the job as application/json (image_prompt base64) or "
                             "multipart/form-data (fields 'request' and 'image_prompt')")


def _submit(services: Services, user: User, body: GenerationRequest,
            idempotency_key: str | None) -> tuple[JobOut, bool]:
    with services.write_session_factory() as session:
        job, replayed = job_rules.create_job(session, services, user, body, idempotency_key)
        return job_rules.job_out(session, services, job), replayed


@router.post("", status_code=202, response_model=JobOut, openapi_extra=_SUBMIT_DOC,
             responses={409: {"model": Detail}, 413: {"model": Detail},
                        415: {"model": Detail}, 429: {"model": Detail}})
async def submit_job(request: Request, response: Response, user: CurrentUser,
                     services: ServicesDep,
                     idempotency_key: Annotated[str | None, Header(
                         min_length=1, max_length=128,
                         description="Retrying with the same key returns the same job.")] = None,
                     ) -> JobOut:
    body = await _parse_submission(request)
    out, replayed = await run_in_threadpool(_submit, services, user, body, idempotency_key)
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None and not replayed:
        dispatcher.wake()  # same event loop: start it now rather than at the next poll
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get("", response_model=JobPage)
def list_my_jobs(user: CurrentUser, session: SessionDep, services: ServicesDep,
                 status: str | None = Query(None, description="queued, running, succeeded, "
                                                              "failed or cancelled"),
                 limit: int = Query(20, ge=1, le=100),
                 cursor: str | None = Query(None, max_length=200)) -> JobPage:
    return job_rules.list_jobs(session, services, user, status=status, limit=limit,
                               cursor=cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job: OwnedJob, session: SessionDep, services: ServicesDep) -> JobOut:
    return job_rules.job_out(session, services, job)


@router.delete("/{job_id}", response_model=JobOut)
def cancel(job: OwnedJob, session: SessionDep, services: ServicesDep) -> JobOut:
    """Idempotent. A queued job is cancelled at once; a running one within a search step."""
    return job_rules.job_out(session, services, job_rules.cancel_job(session, job))


def _file_response(request: Request, services: Services, key: str | None, what: str,
                   job: Job) -> Response:
    if key is None:
        raise HTTPException(404 if what == "preview" else 409,
                            f"job {job.id} has no {what} yet (status: {job.status})")
    etag = f'"{key.partition(".")[0]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(services.storage.get(key), media_type="image/png", headers=headers)


@router.get("/{job_id}/image", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 409: {"model": Detail}})
def image(request: Request, services: ServicesDep,
          job: Annotated[Job, Depends(job_by_token_or_link("image"))]) -> Response:
    """The finished PNG. Bearer token of the owner, or the signed ``image_url``."""
    return _file_response(request, services, job.result_key, "image", job)


@router.get("/{job_id}/preview", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def preview(request: Request, services: ServicesDep,
            job: Annotated[Job, Depends(job_by_token_or_link("preview"))]) -> Response:
    return _file_response(request, services, job.preview_key, "preview", job)


def _snapshot(services: Services, job_id: str) -> tuple[JobOut, str | None] | None:
    """The job as the client sees it, plus its preview's key (signed URLs change each call)."""
    with services.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return job_rules.job_out(session, services, job), job.preview_key


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, services: ServicesDep,
                 job: Annotated[Job, Depends(job_by_token_or_link("events"))],
                 ) -> StreamingResponse:
    """Server-sent events: ``status``, ``progress`` and ``preview`` with the job as JSON,
    then ``done``. Any web worker can serve any job: it follows the shared database."""

    async def stream() -> AsyncIterator[str]:
        seen: dict[str, Any] = {}
        beat = time.monotonic()
        while not await request.is_disconnected():
            snapshot = await run_in_threadpool(_snapshot, services, job.id)
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
            if out.status in TERMINAL:
                yield f"event: done\ndata: {data}\n\n"
                return
            if time.monotonic() - beat > SSE_HEARTBEAT_S:
                yield ": keep-alive\n\n"
                beat = time.monotonic()
            await asyncio.sleep(SSE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
