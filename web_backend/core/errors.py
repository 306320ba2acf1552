"""The service's refusals: a status and the sentence a client needs to fix its request.

They are :class:`ServiceError` subclasses, raised by the domain packages (accounts,
jobs, ...) without knowing about HTTP frameworks, so the CLI can catch the same errors
and print their message; :mod:`web_backend.api.errors` turns them into responses.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "PayloadTooLarge",
           "ServiceError", "ServiceUnavailable", "TooManyRequests", "Unauthorized",
           "Unprocessable", "UnsupportedMediaType"]


class ServiceError(Exception):
    """A refusal with the status and the sentence a client needs to fix its request."""

    status_code: ClassVar[int] = 400

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None,
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self.headers = headers
        self.code = code     # a stable machine-readable name, where one helps (OpenAI's shape)
        self.param = param   # the request field at fault, where there is one


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
