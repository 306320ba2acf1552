"""Receiving clipgan's webhooks: verify that a call is ours, unchanged, recent and new.

Every webhook is signed per Standard Webhooks with your webhook secret (``POST
/v1/users/me/webhook-secret``, shown once). Verify **before** trusting the body::

    from clipgan.webhooks import ReplayGuard, WebhookVerificationError, verify

    seen = ReplayGuard()               # one per receiver, kept between calls
    try:
        event = verify(secret, body_bytes, request_headers, seen=seen)
    except WebhookReplayed:
        return 204                     # a message you already handled: acknowledge it
    except WebhookVerificationError:
        return 400                     # not from clipgan, altered, or out of its window
    if event["type"] == "job.completed":
        download(event["data"]["image_url"])   # a signed link, no token needed

What is refused: a wrong or missing signature; a ``webhook-timestamp`` that is not plain
ASCII digits (``1700000000.999`` or ``+1700000000e0`` would otherwise be read as the
same moment and keep the signature valid); one older than five minutes or more than a
minute ahead of this clock. Delivery is at least once, so the same message can arrive
again with the same ``webhook-id``: a :class:`ReplayGuard` remembers the ids it saw
for as long as their timestamps are acceptable, and reports a repeat
(:class:`WebhookReplayed`) instead of handing it over twice. :class:`Receiver` is a
small verifying server (``clipgan client listen``) that does all of this, with a
deadline on each whole request and a bound on connections at once.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ml_backend.text import parse_decimal

__all__ = ["MAX_BODY_BYTES", "Receiver", "ReplayGuard", "WebhookReplayed",
           "WebhookVerificationError", "verify"]

MAX_BODY_BYTES = 1024 * 1024  # a job is a few kB; anything far larger is not ours
TOLERANCE_S = 300             # how old a message may be (a delivery that was retried)
FUTURE_SKEW_S = 60            # how far ahead of this clock (clocks are not exact)


class WebhookReplayed(WebhookVerificationError):
    """A genuine message whose ``webhook-id`` was already verified: handled before."""


class ReplayGuard:
    """The ``webhook-id`` of each message verified in the last ``TOLERANCE_S`` seconds
    (older ones are refused by their timestamp anyway), at most ``max_ids``."""

    def __init__(self, *, max_ids: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_ids = max_ids
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when it expires
        self._lock = threading.Lock()

    def first_time(self, webhook_id: str) -> bool:
        """Remember ``webhook_id``; False when it was seen within its window."""
        now = self._clock()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            if webhook_id in self._seen:
                return False
            self._seen[webhook_id] = now + TOLERANCE_S + FUTURE_SKEW_S
            while len(self._seen) > self.max_ids:
                self._seen.popitem(last=False)
            return True


def verify(secret: str, body: bytes, headers: Mapping[str, str], *,
           seen: ReplayGuard | None = None, now: float | None = None) -> dict[str, Any]:
    """The event (``type``, ``timestamp``, ``data``: the job) if ``body`` was signed with
    ``secret`` within the last five minutes (and, with ``seen``, not verified before);
    else raises WebhookVerificationError (:class:`WebhookReplayed` for a repeat)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    stamp = parse_decimal(lowered.get("webhook-timestamp", ""), max_digits=12)
    if stamp is None:
        raise WebhookVerificationError("webhook-timestamp must be whole seconds, in digits")
    age = (time.time() if now is None else now) - stamp
    if age > TOLERANCE_S:
        raise WebhookVerificationError("the message is too old")
    if age < -FUTURE_SKEW_S:
        raise WebhookVerificationError("the message is timestamped in the future")
    try:
        event = Webhook(secret).verify(body, lowered)
    except (ValueError, IndexError):  # malformed signature headers
        raise WebhookVerificationError("malformed webhook signature headers") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a webhook event")
    if seen is not None and not seen.first_time(lowered["webhook-id"]):
        raise WebhookReplayed("this message was verified before")
    return event


class _Deadlines:
    """One watchdog thread that shuts each connection at its deadline (the read in
    progress then ends), instead of a timer thread per request."""

    def __init__(self) -> None:
        self._due: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="webhook-deadlines").start()

    def add(self, conn: socket.socket, deadline: float) -> None:
        with self._lock:
            self._due[conn] = deadline

    def remove(self, conn: socket.socket) -> None:
        with self._lock:
            self._due.pop(conn, None)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._due.items() if deadline <= now]
                for conn in late:
                    del self._due[conn]
            for conn in late:
                with contextlib.suppress(OSError):  # already closed by its handler
                    conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()


class _BoundedServer(http.server.ThreadingHTTPServer):
    """At most ``max_connections`` requests at once: more are closed at once, not given
    a thread each."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler],
                 *, max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.deadlines = _Deadlines()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Receiver:
    """A verifying webhook endpoint on ``host:port``: each new verified event is handed to
    ``on_event`` (with its ``webhook-id``) and answered 204; a repeat is answered 204
    without it; anything else 400.

    Each request has ``deadline_s`` for all of it (a sender that trickles bytes is cut
    off, not waited on read by read), and at most ``max_connections`` are served at once.
    """

    def __init__(self, secret: str, on_event: Callable[[str, dict[str, Any]], None], *,
                 host: str = "127.0.0.1", port: int = 0, deadline_s: float = 10.0,
                 max_connections: int = 32) -> None:
        Webhook(secret)  # a malformed secret fails here, not on the first call
        guard = ReplayGuard()

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = deadline_s  # no read waits longer than the whole request may

            def handle(self) -> None:
                # the whole request, headers and body, within deadline_s: then the socket
                # is shut, and the read in progress ends
                deadlines = server.deadlines
                deadlines.add(self.connection, time.monotonic() + deadline_s)
                try:
                    super().handle()
                finally:
                    deadlines.remove(self.connection)

            def do_POST(self) -> None:
                length = parse_decimal(self.headers.get("content-length") or "")
                if length is None or not 0 < length <= MAX_BODY_BYTES:
                    self._answer(413 if length else 400, "body missing or too large")
                    return
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # cut off at the deadline, or the sender left
                try:
                    event = verify(secret, body, dict(self.headers.items()), seen=guard)
                except WebhookReplayed:
                    self._answer(204, "")  # delivered before: acknowledge, hand over once
                    return
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

        server = self.server = _BoundedServer((host, port), Handler,
                                              max_connections=max_connections)
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
        self.server.deadlines.close()
