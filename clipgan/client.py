"""A small REST client for a running clipgan server (what a chat bot would call)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
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


class _KeyAuth(httpx.Auth):
    """An API key on every request: it does not expire with an access token."""

    def __init__(self, key: str) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.key}"
        yield request


class _LoginAuth(httpx.Auth):
    """A password login's access token, refreshed before it expires and once on a 401.

    Refresh tokens rotate and a spent one ends the whole login, so one thread refreshes
    at a time (the others wait for its new token instead of spending the old one again).
    """

    _MARGIN_S = 0.2  # of the token's lifetime: refresh when less than this is left

    def __init__(self, base_url: str, tokens: dict[str, Any], *, timeout_s: float) -> None:
        self._refresher = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._lock = threading.Lock()
        self._set(tokens)

    def _set(self, tokens: dict[str, Any]) -> None:
        self.access, self.refresh = tokens["access_token"], tokens["refresh_token"]
        self.lifetime = float(tokens.get("expires_in") or 0)
        self.expires_at = time.monotonic() + self.lifetime

    def _renew(self, seen: str) -> str:
        """A fresh access token (unless another thread already replaced ``seen``)."""
        with self._lock:
            if self.access == seen:
                r = self._refresher.post("/v1/auth/refresh",
                                         json={"refresh_token": self.refresh})
                if r.status_code != 200:
                    raise ClientError(f"{r.status_code}: could not refresh the login "
                                      f"({_detail(r)}); sign in again")
                self._set(r.json())
            return self.access

    def _current(self) -> str:
        token = self.access
        if time.monotonic() > self.expires_at - self.lifetime * self._MARGIN_S:
            token = self._renew(token)
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # expired in flight, or a clock that runs late
            request.headers["Authorization"] = f"Bearer {self._renew(token)}"
            yield request

    def close(self) -> None:
        self._refresher.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


class ClipganClient:
    """The REST API for a program: with an API key (``api_key=``, or ``CLIPGAN_API_KEY``),
    or signed in with a password (its access token refreshed as it nears its end, and
    once on a 401; safe to share between threads)."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        key = api_key or os.environ.get("CLIPGAN_API_KEY") or None
        self._login: _LoginAuth | None = None
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                 auth=_KeyAuth(key) if key else None)

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ClientError(f"{response.status_code}: {_detail(response)}")
        return response

    def sign_in(self, username: str, password: str) -> None:
        """Sign in with a password (instead of a key): tokens are kept and refreshed."""
        r = self._check(self.http.post("/v1/auth/token",
                                       data={"username": username, "password": password}))
        self._login = _LoginAuth(self.base_url, r.json(), timeout_s=self.timeout_s)
        self.http.auth = self._login

    def create_key(self, name: str, *, scopes: list[str] | None = None,
                   expires_in_days: int | None = None) -> dict[str, Any]:
        """A new API key (needs a password sign-in); ``key`` is in this answer only."""
        body: dict[str, Any] = {"name": name, "expires_in_days": expires_in_days}
        if scopes is not None:
            body["scopes"] = scopes
        return dict(self._check(self.http.post("/v1/users/me/api-keys", json=body)).json())

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self._check(self.http.get("/v1/users/me/api-keys")).json())

    def revoke_key(self, key_id: str) -> None:
        self._check(self.http.delete(f"/v1/users/me/api-keys/{key_id}"))

    def submit(self, request: dict[str, Any], idempotency_key: str | None = None,
               ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/jobs", json=request, headers=headers)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job if it is still active; a job that ended meanwhile is left as it
        is (never deleted by a cancel that lost a race)."""
        return dict(self._check(self.http.delete(f"/v1/jobs/{job_id}",
                                                 params={"cancel_only": "true"})).json())

    def delete(self, job_id: str) -> dict[str, Any]:
        """Delete an ended job with its picture (an active one is cancelled instead: call
        again once it has ended)."""
        return dict(self._check(self.http.delete(f"/v1/jobs/{job_id}")).json())

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
