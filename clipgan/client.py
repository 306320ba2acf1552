"""A small REST client for a running clipgan server (what a chat bot would call)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

__all__ = ["ClientError", "ClipganClient"]


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
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event is not None:
                    data = json.loads(line.removeprefix("data: "))
                    yield event, data
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
