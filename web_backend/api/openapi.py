"""The OpenAPI document as SDK generators read it: operation ids, refusals, images, job body.

Client developers generate typed clients from ``/openapi.json`` (openapi-python-client,
@hey-api/openapi-ts): operation ids become their function names, component names
their classes, declared statuses their error handling. So the document is API too,
and ``tests/web_backend/test_openapi_sdks.py`` generates a client from it and runs
the whole flow with it. What may change within ``/v1`` is in the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from web_backend.api.schemas import Detail
from web_backend.jobs.schemas import JobRequest

__all__ = ["EVENT_STREAM", "JOB_SUBMISSION", "PNG", "install_openapi", "operation_id",
           "refusals"]

_SECONDS = {"type": "integer", "minimum": 1}
_RATE_HEADERS: dict[str, Any] = {
    "Retry-After": {"description": "Seconds until a retry can succeed.", "schema": _SECONDS},
    "RateLimit-Limit": {"description": "Requests allowed in the window (per-user and "
                        "per-address limits; absent on quota and stream limits).",
                        "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in the window.",
                            "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the window frees a request.",
                        "schema": {"type": "integer"}},
}

# status: (what it means for every route that declares it, the headers it carries)
_REFUSALS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Malformed request: a body that is not valid JSON or form data, or a cursor "
          "not taken from a previous page.", {}),
    401: ("Not signed in, or the access token has expired or its login has ended: "
          "refresh or sign in again.",
          {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}),
    403: ("Signed in but not allowed: a disabled account, not an administrator, or an "
          "invalid or expired signed link.", {}),
    404: ("No such resource among yours.", {}),
    408: ("The request body did not arrive within the body timeout.", {}),
    409: ("The request conflicts with the resource's state.", {}),
    413: ("The request body is larger than this route accepts.", {}),
    415: ("Send JSON, or multipart/form-data where the route accepts it.", {}),
    422: ("A field is invalid: `detail` lists each one, or says what to fix.", {}),
    429: ("A limit was reached; retry after `Retry-After` seconds.", _RATE_HEADERS),
    500: ("A job failed: no picture was made.", {}),
    503: ("Overloaded, or a dependency is unreachable; retry after `Retry-After` seconds.",
          {"Retry-After": _RATE_HEADERS["Retry-After"]}),
    504: ("Not ready in time; the work goes on: retry after `Retry-After` seconds.",
          {"Retry-After": _RATE_HEADERS["Retry-After"]}),
}

PNG: dict[int | str, dict[str, Any]] = {200: {
    "description": "A PNG image (bytes).",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
}}

EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {
    "description": ("Server-sent events `status`, `progress`, `preview` and `done`; each "
                    "`data` is the job as `JobOut` JSON. Comments keep the stream alive."),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}}

# The job body is read by a dependency (JSON or multipart), so FastAPI cannot infer
# it: declared here, the models themselves added to components by install_openapi.
JOB_SUBMISSION: dict[str, Any] = {"requestBody": {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/JobRequest"},
        },
        "multipart/form-data": {
            "schema": {"$ref": "#/components/schemas/JobSubmissionForm"},
            "encoding": {"request": {"contentType": "application/json"}},
        },
    },
}}

_JOB_SUBMISSION_FORM: dict[str, Any] = {
    "title": "JobSubmissionForm",
    "description": "A job with an image file: the JSON request in `request`, the file apart.",
    "type": "object",
    "properties": {
        "request": {"type": "string", "description": "A JobRequest as JSON."},
        "image_prompt": {"type": "string", "format": "binary",
                         "description": "PNG, JPEG or WebP, up to 10 MB."},
    },
    "required": ["request"],
    "examples": [{"request": '{"prompt": "a girl like this one, smiling", "seed": 7}'}],
}

# Added to components whether or not a route names them in its signature.
_EXTRA_MODELS: tuple[type[BaseModel], ...] = (JobRequest,)


def operation_id(route: APIRoute) -> str:
    """``jobs-submit``, ``auth-token``: the tag, then the route's name (what the SDKs
    call the function), instead of FastAPI's ``submit_job_v1_jobs_post``."""
    tag = [str(route.tags[0])] if route.tags else []
    return "-".join([*tag, route.name.replace("_", "-")])


def _headers(code: int) -> dict[str, Any]:
    return {"headers": _REFUSALS[code][1]} if _REFUSALS[code][1] else {}


def refusals(*codes: int, described: Mapping[int, str] | None = None,
             body: type[BaseModel] = Detail) -> dict[int | str, dict[str, Any]]:
    """Responses for a route decorator: each status with the ``Detail`` body (or ``body``:
    the OpenAI routes' ``OpenAIError``), its meaning (``described`` says it more
    precisely for this route) and its headers."""
    described = described or {}
    return {code: {"model": body, "description": described.get(code, _REFUSALS[code][0]),
                   **_headers(code)} for code in codes}


def _response(code: int, body: str = "Detail") -> dict[str, Any]:
    """The same, written straight into the document (after FastAPI built it)."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
    return {"description": _REFUSALS[code][0], "content": content, **_headers(code)}


def _add_models(schemas: dict[str, Any]) -> None:
    _, defs = models_json_schema([(model, "validation") for model in _EXTRA_MODELS],
                                 ref_template="#/components/schemas/{model}")
    for name, schema in {**defs.get("$defs", {}),
                         "JobSubmissionForm": _JOB_SUBMISSION_FORM}.items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(f"two different OpenAPI components named {name}")
        schemas[name] = schema


def _complete(document: dict[str, Any]) -> None:
    """What no route can say for itself: the extra models; each docstring's first line
    as the summary (what SDKs and /docs show); FastAPI's own 422 body replaced by ours;
    what every body may meet before the route (unparsable 400, the body limits' 408 and
    413); 503 on every route (the database or the process may be busy)."""
    _add_models(document.setdefault("components", {}).setdefault("schemas", {}))
    for path, methods in document["paths"].items():
        body = "OpenAIError" if path.startswith("/openai/") else "Detail"
        for operation in methods.values():
            if operation.get("description"):
                operation["summary"] = operation["description"].splitlines()[0].rstrip(".")
            responses = operation["responses"]
            if "HTTPValidationError" in str(responses.get("422")):  # FastAPI's, not ours
                responses["422"] = _response(422, body)
            for code in (400, 408, 413) if "requestBody" in operation else ():
                responses.setdefault(str(code), _response(code, body))
            responses.setdefault("503", _response(503, body))
    for unused in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(unused, None)


def install_openapi(app: FastAPI) -> None:
    """Build ``app``'s document once, on first request, with ``_complete`` applied."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(build())  # FastAPI keeps the dict it returns; completed in place
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
