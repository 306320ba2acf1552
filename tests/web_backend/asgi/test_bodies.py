"""The body limit's reading of Content-Length: ASCII digits or a clear 400, never a crash."""

from __future__ import annotations

import asyncio
import json

import pytest

from web_backend.asgi.bodies import BodyLimit


async def _echo(scope, receive, send) -> None:
    body = (await receive()).get("body", b"")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(content_length: str, body: bytes = b"{}") -> tuple[int, bytes]:
    async def never(_: object) -> bool:
        return False

    limit = BodyLimit(_echo, limit=1024, timeout_s=5, uploads={}, may_upload=never,
                      max_concurrent_uploads=1)
    scope = {"type": "http", "method": "POST", "path": "/v1/users",
             "headers": [(b"content-length", content_length.encode())]}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(limit(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize("declared", ["²", "①", "٣", "1e3", "+2", " 2", "0x2", "2,0", "9" * 40])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(declared: str) -> None:
    status, body = _call(declared)
    assert status == 400
    assert json.loads(body) == {"detail": "Content-Length must be a decimal number of bytes"}


def test_a_plain_length_passes_and_a_large_one_is_413() -> None:
    assert _call("2") == (200, b"{}")
    assert _call("4096")[0] == 413
