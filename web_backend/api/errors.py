"""Every error is JSON ``{"detail": ...}`` saying what to fix; nothing leaks a trace or input."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from web_backend.core.errors import ServiceError
from web_backend.storage.blobs import StoreUnavailable

__all__ = ["OPENAI_PREFIX", "install_error_handlers", "openai_error", "validation_detail"]

log = logging.getLogger(__name__)


def validation_detail(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """Location, message and type only: the offending input (a password?) is not echoed."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


OPENAI_PREFIX = "/openai/"
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                 413: "invalid_request_error", 415: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, detail: Any, *, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    """A refusal in the OpenAI API's shape (what its SDKs and clients read):
    ``{"error": {"message", "type", "param", "code"}}``."""
    if isinstance(detail, list):  # field errors: the first names the parameter
        first = detail[0] if detail else {}
        loc = [part for part in first.get("loc", []) if part != "body"]
        param = param or (str(loc[0]) if loc else None)
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: "
                            f"{e.get('msg', '')}" for e in detail)
    else:
        message = str(detail)
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": code or kind}}


def install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, status: int, detail: Any, headers: dict[str, str] | None,
                code: str | None = None, param: str | None = None) -> JSONResponse:
        if status == 429:
            request.app.state.services.metrics.rate_limited.labels(
                limit=request.url.path).inc()
        if request.url.path.startswith(OPENAI_PREFIX):
            return JSONResponse(openai_error(status, detail, code=code, param=param),
                                status_code=status, headers=headers)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
        return respond(request, exc.status_code, exc.detail, exc.headers, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, 422, validation_detail(exc), None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(request, exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return respond(request, 503, "the database is busy or unreachable; retry shortly",
                       {"Retry-After": "2"})

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("picture store unavailable on %s %s: %s", request.method, request.url.path,
                    exc)
        return respond(request, 503, "the picture store is unavailable; retry shortly",
                       {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody is listening; nothing to log

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error("unhandled error %s on %s %s", reference, request.method, request.url.path,
                  exc_info=exc)
        return respond(request, 500, f"internal error (reference {reference})", None)
