"""Receiving clipgan's webhooks: verify that a call is ours, unchanged and recent.

Every webhook is signed per Standard Webhooks with your webhook secret (``POST
/v1/users/me/webhook-secret``, shown once). Verify **before** trusting the body::

    from clipgan.webhooks import WebhookVerificationError, verify

    try:
        event = verify(secret, body_bytes, request_headers)
    except WebhookVerificationError:
        return 400                     # not from clipgan, altered, or replayed late
    if event["type"] == "job.completed":
        download(event["data"]["image_url"])   # a signed link, no token needed

Delivery is at least once: the same message can arrive twice, with the same
``webhook-id``; keep the ids you handled. :class:`Receiver` is a small verifying
server (``clipgan client listen``) to try webhooks out.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["MAX_BODY_BYTES", "Receiver", "WebhookVerificationError", "verify"]

MAX_BODY_BYTES = 1024 * 1024  # a job is a few kB; anything far larger is not ours


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The event (``type``, ``timestamp``, ``data``: the job) if ``body`` was signed with
    ``secret`` within the last five minutes; else raises WebhookVerificationError."""
    try:
        event = Webhook(secret).verify(body, dict(headers))
    except (ValueError, IndexError):  # malformed signature headers
        raise WebhookVerificationError("malformed webhook signature headers") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a webhook event")
    return event


class Receiver:
    """A verifying webhook endpoint on ``host:port``: each verified event is handed to
    ``on_event`` (with its ``webhook-id``) and answered 204; anything else 400."""

    def __init__(self, secret: str, on_event: Callable[[str, dict[str, Any]], None], *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        Webhook(secret)  # a malformed secret fails here, not on the first call

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # seconds per socket read: a slow sender cannot hold a thread

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if not 0 < length <= MAX_BODY_BYTES:
                    self._answer(413 if length else 400, "body missing or too large")
                    return
                body = self.rfile.read(length)
                try:
                    event = verify(secret, body, dict(self.headers.items()))
                except (WebhookVerificationError, json.JSONDecodeError) as exc:
                    self._answer(400, f"refused: {exc}")
                    return
                on_event(self.headers["webhook-id"], event)
                self._answer(204, "")

            def _answer(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_port

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> Receiver:
        """Serve on a background thread (until :meth:`close`)."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
