"""A small REST client for a running clipgan server (what a chat bot would call)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

__all__ = ["ClientError", "ClipganClient", "sse_events"]


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines as the SSE spec ends them: CRLF, LF or CR, and nothing else (a reader that
    also breaks on U+2028 or NEL, as ``str.splitlines`` does, cuts events in two)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        held = pending.endswith(b"\r")  # maybe the first half of a CRLF: wait for more
        parts = re.split(rb"\r\n|\n|\r", pending[:-1] if held else pending)
        pending = parts.pop() + (b"\r" if held else b"")
        for line in parts:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.removesuffix(b"\r").decode("utf-8", errors="replace")


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event, data) of each server-sent event, parsed per the HTML spec: fields
    ``event`` and ``data`` (several data lines joined by newlines), comments skipped,
    an event dispatched at its blank line."""
    event, data = "message", list[str]()
    for line in _lines(chunks):
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


class ClientError(Exception):
    """The server said no; the message is its ``detail``."""


class ClipganClient:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.status_code}: {detail}")
        return response

    def sign_in(self, username: str, password: str) -> None:
        r = self._check(self.http.post("/v1/auth/token",
                                       data={"username": username, "password": password}))
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def submit(self, request: dict[str, Any], idempotency_key: str | None = None,
               ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/jobs", json=request, headers=headers)).json()

    def new_webhook_secret(self) -> str:
        """A new secret for your webhook signatures (replaces the old one; shown once)."""
        return str(self._check(self.http.post("/v1/users/me/webhook-secret")).json()["secret"])

    def events(self, job: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, job) pairs from the job's SSE stream until it is done."""
        with self.http.stream("GET", job["events_url"], timeout=None) as response:
            self._check(response)
            for event, data in sse_events(response.iter_bytes()):
                yield event, json.loads(data)
                if event == "done":
                    return

    def generate(self, request: dict[str, Any],
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 ) -> tuple[dict[str, Any], bytes]:
        """Submit, follow to the end, download: (final job, PNG bytes)."""
        job = self.submit(request)
        final = job
        for event, data in self.events(job):
            final = data
            if on_event is not None:
                on_event(event, data)
        if final.get("status") != "succeeded":
            raise ClientError(f"job {final.get('status')}: {final.get('error')}")
        png = self._check(self.http.get(final["image_url"])).content
        return final, png

    def sample(self, seed: str | None = None, psi: float | None = None,
               model: str = "default") -> bytes:
        params = {k: v for k, v in {"seed": seed, "psi": psi, "model": model}.items()
                  if v is not None}
        return self._check(self.http.get("/v1/sample.png", params=params)).content
