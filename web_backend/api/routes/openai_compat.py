"""The OpenAI Images API under ``/openai/v1``: clipgan from OpenAI's SDKs and clients.

``POST /openai/v1/images/generations`` makes each picture a normal job (limits, quotas,
the job list and the page all see it), then waits for them on the change feed (no
polling) for at most ``CLIPGAN_OPENAI_WAIT_S``; past that it answers 504 and the jobs
go on. Refusals come in OpenAI's shape (:func:`~web_backend.api.errors.openai_error`).

**Retries make no duplicates.** OpenAI's SDK retries a timeout, 408, 409, 429 and any
5xx, up to twice, without an idempotency key of its own, and says which attempt it is
in ``X-Stainless-Retry-Count``. A first attempt always makes new jobs (the same prompt
twice is two pictures); a retry (count ≥ 1) of the same request, with the same
credential, within an hour, waits for the jobs the first attempt made instead. A client
that sends its own ``Idempotency-Key`` gets the native API's rule.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from web_backend.api.deps import (
    AccessClaimsDep,
    ServicesDep,
    check_live_login,
    require_scope,
)
from web_backend.api.openai_schemas import (
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    OpenAIError,
    OpenAIModel,
    OpenAIModelList,
)
from web_backend.api.openapi import refusals
from web_backend.core.errors import (
    BadRequest,
    Conflict,
    ServiceError,
    ServiceUnavailable,
    Unprocessable,
)
from web_backend.core.models import Job, JobStatus, utcnow
from web_backend.core.security import AccessClaims
from web_backend.jobs.ml_client import MLUnavailable
from web_backend.jobs.schemas import JobRequest
from web_backend.services import Services

__all__ = ["router"]

router = APIRouter(prefix="/openai/v1", tags=["openai"])

RETRY_WINDOW = timedelta(hours=1)
_AUTO_KEY = "openai:auto:"


class GatewayTimeout(ServiceError):
    status_code = 504


class JobFailed(ServiceError):
    status_code = 500


async def _models(services: Services) -> dict[str, Any]:
    try:
        info = services.ml.known_info() or await services.ml.info()
    except MLUnavailable:
        raise ServiceUnavailable("the image service is not reachable right now; retry "
                                 "shortly", retry_after_s=30) from None
    models: dict[str, Any] = info.get("models", {})
    return models


@router.get("/models", name="models", response_model=OpenAIModelList,
            responses=refusals(401, 403, 503, body=OpenAIError))
async def list_models(claims: AccessClaimsDep, services: ServicesDep) -> OpenAIModelList:
    """The models, in OpenAI's shape."""
    await check_live_login(services, claims)
    return OpenAIModelList(data=[OpenAIModel(id=name) for name in await _models(services)])


def _upscale(size: str | None, model: str, models: dict[str, Any]) -> int:
    """1, 2 or 4 from a WxH size and the model's resolution; 400 naming what would do."""
    if size in (None, "auto"):
        return 1
    resolution = int(models.get(model, {}).get("resolution") or 0)
    sizes = [f"{resolution * k}x{resolution * k}" for k in (1, 2, 4)] if resolution else []
    for factor, allowed in zip((1, 2, 4), sizes, strict=False):
        if size == allowed:
            return factor
    raise BadRequest(f"size {size!r} is not one this model makes; use 'auto' or one of "
                     f"{', '.join(sizes)}", code="unsupported_size", param="size")


async def _job_request(services: Services, body: ImageGenerationRequest) -> JobRequest:
    models = await _models(services) if body.size not in (None, "auto") or body.model else {}
    model = body.model or "default"
    if body.model and body.model not in models:
        raise BadRequest(f"unknown model {body.model!r}; GET /openai/v1/models lists "
                         f"{', '.join(models) or 'none right now'}", code="model_not_found",
                         param="model")
    n = body.n or 1
    if n > services.settings.openai.max_n:
        raise BadRequest(f"n is at most {services.settings.openai.max_n} here",
                         code="invalid_n", param="n")
    fields: dict[str, Any] = {"prompt": body.prompt, "model": model, "n": n,
                              "upscale": _upscale(body.size, model, models),
                              "seed": body.seed, "psi": body.creativity,
                              "negative_prompt": body.negative_prompt}
    if body.steps is not None:
        fields["steps"] = body.steps
    try:
        return JobRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


def _fingerprint(claims: AccessClaims, body: ImageGenerationRequest) -> str:
    """Who asked (the login or key), and exactly what."""
    asked = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{claims.session_id}\n{asked}".encode()).hexdigest()[:32]


def _first_attempt_key(services: Services, user_id: int, fingerprint: str) -> str | None:
    """The key of the latest first attempt of the same request, if any in the window."""
    prefix = f"{_AUTO_KEY}{fingerprint}:"
    with services.session_factory() as session:
        return session.scalar(
            select(Job.idempotency_key).where(
                Job.user_id == user_id, Job.created_at >= utcnow() - RETRY_WINDOW,
                Job.idempotency_key.startswith(prefix, autoescape=True))
            .order_by(Job.created_at.desc()).limit(1))


async def _idempotency_key(services: Services, claims: AccessClaims,
                           body: ImageGenerationRequest, given: str | None,
                           retry_count: str | None) -> str:
    if given:
        return f"openai:{given}"
    fingerprint = _fingerprint(claims, body)
    if retry_count not in (None, "", "0"):
        earlier = await run_in_threadpool(_first_attempt_key, services, claims.user_id,
                                          fingerprint)
        if earlier is not None:
            return earlier
    return f"{_AUTO_KEY}{fingerprint}:{uuid.uuid4().hex}"


async def _finished(services: Services, job_ids: list[str], deadline: float) -> None:
    """Until every job has ended (heard on the feed); 504 at the deadline."""
    watches = [services.feed.subscribe(job_id) for job_id in job_ids]
    try:
        for watch in watches:
            view = await watch.ready()
            while view is not None and JobStatus(view.out.status).active:
                watch.changed.clear()
                left = deadline - time.monotonic()
                if left <= 0 or services.feed.closing:
                    raise GatewayTimeout(
                        f"the pictures were not ready within "
                        f"{services.settings.openai.wait_s:g} s; they are still being made "
                        f"(jobs {', '.join(job_ids)}: GET /v1/jobs/{{id}}). Sending the same "
                        "request again waits for them.",
                        # at once: the retry itself waits (for the same jobs)
                        headers={"Retry-After": "1"}, code="timeout")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.changed.wait(), left)
                view = watch.view
    finally:
        for watch in watches:
            watch.close()


def _results(services: Services, job_ids: list[str]) -> list[Job]:
    with services.session_factory() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    return [jobs[job_id] for job_id in job_ids if job_id in jobs]


@router.post("/images/generations", name="generate", response_model=ImagesResponse,
             responses=refusals(400, 401, 403, 409, 422, 429, 500, 503, 504, body=OpenAIError,
                                described={
                 400: "A parameter clipgan cannot honour (a size, a model, n).",
                 409: "A job was cancelled before its picture was made."}))
async def generate(body: ImageGenerationRequest, request: Request, claims: AccessClaimsDep,
                   services: ServicesDep,
                   idempotency_key: Annotated[str | None, Header(max_length=120)] = None,
                   x_stainless_retry_count: Annotated[str | None, Header(
                       max_length=8, include_in_schema=False)] = None,
                   ) -> ImagesResponse:
    """Make pictures and answer when they are done (OpenAI's images API)."""
    require_scope(claims, "jobs:write")
    require_scope(claims, "jobs:read")
    await check_live_login(services, claims)
    job_request = await _job_request(services, body)
    key = await _idempotency_key(services, claims, body, idempotency_key,
                                 x_stainless_retry_count)
    release = services.streams.admit(claims.user_id)  # a wait holds a place like a stream
    try:
        admitted = await services.submissions.submit(
            claims.user_id, job_request, key, key_id=claims.key_id,
            key_per_minute=claims.per_minute)
        if not admitted.replayed and (dispatcher := request.app.state.dispatcher) is not None:
            dispatcher.wake()
        await _finished(services, admitted.ids,
                        time.monotonic() + services.settings.openai.wait_s)
    finally:
        release()
    jobs = await run_in_threadpool(_results, services, admitted.ids)
    for job in jobs:
        if job.status is JobStatus.cancelled:
            raise Conflict(f"job {job.id} was cancelled", code="cancelled")
        if job.status is not JobStatus.succeeded or job.result_key is None:
            raise JobFailed(f"job {job.id} failed: {job.error or 'no picture was made'}",
                            code="job_failed")
    data = []
    base = str(request.base_url).rstrip("/")
    for job in jobs:
        prompt = job.request.get("prompt")
        if body.response_format == "b64_json":
            png = await services.blobs.get(job.result_key or "")
            data.append(ImageData(b64_json=base64.b64encode(png).decode(),
                                  revised_prompt=prompt))
        else:
            link = services.job_viewer.signed_links(job.id, image=True, preview=False,
                                                    not_after=None)["image_url"]
            data.append(ImageData(url=f"{base}{link}", revised_prompt=prompt))
    return ImagesResponse(created=int(time.time()), data=data)
