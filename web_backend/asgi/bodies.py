"""Request bodies are read whole, under a size limit and a deadline, before anything else.

Why here and not in the routes: a route (or FastAPI's form parser) starts reading
only after admission control has given the request a slot, so a client that sends
headers and then half a body holds that slot for as long as it likes; 32 of them
froze the API. Reading the body first, in the event loop, costs a slow client only
its own connection. And a limit checked per route is a limit some route forgets:
one streaming limit here covers every route, with or without ``Content-Length``.

Only ``POST /v1/jobs`` may send more than a small JSON document (an image prompt), and
only with a valid access token or API key, so an anonymous client cannot make this
process buffer megabytes. How many such uploads are buffered at once is bounded too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_backend.text import parse_decimal

__all__ = ["BodyLimit"]

class BodyLimit:
    """ASGI middleware: buffer each request body within ``limit`` bytes and ``timeout_s``.

    ``uploads`` maps (method, path) to the larger limit of routes that accept files;
    ``may_upload`` says whether a request's headers carry a credential good enough to
    send one (checked before a byte of the body is read).
    """

    def __init__(self, app: ASGIApp, *,
                 limit: int,                                  # bytes, every other route
                 timeout_s: float,                            # to receive a whole body
                 uploads: dict[tuple[str, str], int],         # route -> its larger limit
                 may_upload: Callable[[Headers], Awaitable[bool]],  # a valid bearer?
                 max_concurrent_uploads: int) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self.uploads = uploads
        self.may_upload = may_upload
        self.max_concurrent_uploads = max_concurrent_uploads
        self._upload_slots: asyncio.Semaphore | None = None  # made on the serving loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if "transfer-encoding" not in headers and declared in (None, "0"):
            await self.app(scope, receive, send)  # HTTP/1.1: no length, no chunks, no body
            return
        upload_limit = self.uploads.get((scope["method"], scope["path"].rstrip("/")))
        limit = upload_limit or self.limit
        length = parse_decimal(declared) if declared is not None else None
        if declared is not None and length is None:
            await _refuse(send, 400, "Content-Length must be a decimal number of bytes")
            return
        if length is not None and length > limit:
            await _refuse(send, 413, _too_large(limit, upload_limit is not None))
            return
        if upload_limit is None:
            body = await self._read(receive, send, limit)
        elif not await self.may_upload(headers):
            await _refuse(send, 401, "sign in first: submitting a job needs a bearer access "
                                     "token (POST /v1/auth/token) or an API key",
                          {"www-authenticate": "Bearer"})
            return
        else:
            body = await self._read_upload(receive, send, limit)
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read_upload(self, receive: Receive, send: Send, limit: int) -> bytes | None:
        if self._upload_slots is None:
            self._upload_slots = asyncio.Semaphore(self.max_concurrent_uploads)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._upload_slots.acquire(), self.timeout_s)
        except TimeoutError:
            await _refuse(send, 503, "too many uploads in progress; retry shortly",
                          {"retry-after": "5"})
            return None
        try:
            return await self._read(receive, send, limit,
                                    self.timeout_s - (time.monotonic() - started))
        finally:
            self._upload_slots.release()

    async def _read(self, receive: Receive, send: Send, limit: int,
                    timeout_s: float | None = None) -> bytes | None:
        """The whole body, or None after answering 408/413 (or when the client left)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await _refuse(send, 413, _too_large(limit, limit != self.limit))
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within "
                                     f"{self.timeout_s:g} s; send it at once")
            return None


def _too_large(limit: int, upload: bool) -> str:
    if upload:
        return (f"request body larger than {limit / 2**20:.1f} MB (the JSON request and its "
                "image prompt)")
    return f"request body larger than {limit // 1024} KiB; this route takes a small JSON document"


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message; after it, the client's own (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    """Answer and close: the rest of the body is never read, so the connection ends."""
    payload = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           (b"connection", b"close")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
