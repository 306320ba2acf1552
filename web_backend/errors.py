"""Every error is JSON ``{"detail": ...}`` saying what to fix; nothing leaks a trace or input.

The service's own refusals are :class:`ServiceError` subclasses, raised by the
domain modules (accounts, jobs) without knowing about HTTP frameworks, so the CLI can
catch the same errors and print their message.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "PayloadTooLarge",
           "ServiceError", "ServiceUnavailable", "TooManyRequests", "Unauthorized",
           "Unprocessable", "UnsupportedMediaType", "install_error_handlers",
           "validation_detail"]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A refusal with the status and the sentence a client needs to fix its request."""

    status_code: ClassVar[int] = 400

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self.headers = headers


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class Unprocessable(ServiceError):
    status_code = 422


class TooManyRequests(ServiceError):
    status_code = 429

    def __init__(self, detail: str, *, retry_after_s: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, headers={**(headers or {}),
                                          "Retry-After": str(max(1, retry_after_s))})


class ServiceUnavailable(ServiceError):
    status_code = 503

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


def validation_detail(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """Location, message and type only: the offending input (a password?) is not echoed."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


def install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, status: int, detail: Any,
                headers: dict[str, str] | None) -> JSONResponse:
        if status == 429:
            request.app.state.services.metrics.rate_limited.labels(
                limit=request.url.path).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
        return respond(request, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(request, exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return JSONResponse({"detail": "the database is busy or unreachable; retry shortly"},
                            status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody is listening; nothing to log

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error("unhandled error %s on %s %s", reference, request.method, request.url.path,
                  exc_info=exc)
        return JSONResponse({"detail": f"internal error (reference {reference})"},
                            status_code=500)
