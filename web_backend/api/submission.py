"""Reading a job submission: JSON (image prompt in base64) or multipart (a file field).

FastAPI cannot declare "this JSON model, or this form" for one route, so this
dependency reads either and hands the route a validated ``JobRequest``
(``openapi.JOB_SUBMISSION`` documents both), its webhook URL already checked.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ml_backend.protocol import MAX_IMAGE_PROMPT_BYTES
from web_backend.api.errors import validation_detail
from web_backend.core.errors import (
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from web_backend.jobs.schemas import JobRequest
from web_backend.services import Services
from web_backend.webhooks.targets import ResolverBusy, WebhookTargetRefused, resolve_target

__all__ = ["MAX_SUBMISSION_BYTES", "Submission", "check_webhook_url", "read_submission"]

MAX_SUBMISSION_BYTES = MAX_IMAGE_PROMPT_BYTES * 4 // 3 + 64 * 1024  # base64 image + the rest
_MB = 1024 * 1024

async def _from_form(request: Request) -> dict[str, Any]:
    form = await request.form(max_files=1, max_fields=10)
    raw = form.get("request")
    if not isinstance(raw, str):
        raise Unprocessable("multipart submissions need a 'request' field holding the JSON "
                            "request")
    try:
        fields: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Unprocessable(f"'request' is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise Unprocessable("'request' must be a JSON object")
    upload = form.get("image_prompt")
    if isinstance(upload, UploadFile):
        data = await upload.read(MAX_IMAGE_PROMPT_BYTES + 1)
        if len(data) > MAX_IMAGE_PROMPT_BYTES:
            raise PayloadTooLarge(f"image_prompt is larger than {MAX_IMAGE_PROMPT_BYTES // _MB} MB")
        fields["image_prompt"] = data
    return fields


async def _parse(request: Request) -> JobRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            return JobRequest.model_validate(await _from_form(request))
        if content_type.startswith("application/json") or not content_type:
            return JobRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise Unprocessable(validation_detail(exc)) from None
    raise UnsupportedMediaType("send the job as application/json (image_prompt base64) or "
                               "multipart/form-data (fields 'request' and 'image_prompt')")


async def read_submission(request: Request) -> JobRequest:
    """The body is already whole and within MAX_SUBMISSION_BYTES (``bodies.BodyLimit``).
    Only parsed here: its webhook URL is checked once the caller is known and counted
    (:func:`check_webhook_url`)."""
    return await _parse(request)


Submission = Annotated[JobRequest, Depends(read_submission)]


async def check_webhook_url(services: Services, url: str, *, owner: int) -> None:
    """Refuses (422) a webhook URL that could not be called, before anything is queued
    (checked again at each delivery: names may resolve elsewhere by then); 503 when too
    many names are being looked up. Only for an authenticated caller whose submission
    was counted: a lookup costs a thread for as long as the name's DNS takes."""
    try:
        await resolve_target(url, allow_http=services.settings.env == "dev",
                             allow_networks=services.settings.webhooks.allow_networks,
                             resolver=services.resolver, owner=owner)
    except WebhookTargetRefused as exc:
        raise Unprocessable([{"loc": ["body", "webhook_url"], "msg": str(exc),
                              "type": "webhook_url_refused"}]) from None
    except ResolverBusy as exc:
        raise ServiceUnavailable(f"{exc}; try again in a few seconds",
                                 retry_after_s=5) from None
