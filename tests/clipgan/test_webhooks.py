"""Receiving webhooks as a user would: ``clipgan.webhooks.verify`` / ``Receiver`` and
``clipgan client listen``, against what the server really sends."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from clipgan.webhooks import (
    Receiver,
    ReplayGuard,
    WebhookReplayed,
    WebhookVerificationError,
    verify,
)
from tests.servers import free_port
from tests.web_backend.helpers import SECRET, Account
from web_backend.app import create_app
from web_backend.core import migrate
from web_backend.core.models import JobStatus
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue

SIGNING = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _signed(body: str, secret: str = SIGNING, *, msg_id: str = "msg_1",
            at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body),
            "content-type": "application/json"}


def test_verify_accepts_ours_and_refuses_forged_altered_or_stale() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
    assert verify(SIGNING, body.encode(), _signed(body))["data"]["id"] == "j1"
    other = "whsec_" + "A" * 32
    stale = datetime.fromtimestamp(time.time() - 3600, UTC)
    for headers, sent in [(_signed(body, other), body),                 # another secret
                          (_signed(body), body.replace("j1", "j2")),    # altered body
                          (_signed(body, at=stale), body),              # replayed late
                          ({**_signed(body), "webhook-signature": "v1"}, body),  # malformed
                          ({}, body)]:                                  # unsigned
        with pytest.raises(WebhookVerificationError):
            verify(SIGNING, sent.encode(), headers)


def _announce_body(port: int, length: int) -> bytes:
    """Say a body of ``length`` bytes is coming, send none: the answer comes first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
                     .encode())
        return conn.recv(100)


def test_the_receiver_gets_a_real_job_end_and_refuses_the_rest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clipgan.db'}"
    migrate.upgrade(url)
    settings = WebSettings(env="dev", secret_key=SECRET, data={"dir": tmp_path,
                                                              "database_url": url},
                           webhooks={"allow_networks": ["127.0.0.1/32"], "poll_s": 0.05})
    got: list[tuple[str, dict[str, Any]]] = []
    arrived = threading.Event()
    with TestClient(create_app(settings)) as client:
        alice = Account(client, "alice")
        secret = alice.post("/v1/users/me/webhook-secret").json()["secret"]

        def on_event(webhook_id: str, event: dict[str, Any]) -> None:
            got.append((webhook_id, event))
            arrived.set()

        receiver = Receiver(secret, on_event).start()
        try:
            hook = f"http://127.0.0.1:{receiver.port}/"
            forged = httpx.post(hook, content=b'{"type":"job.completed"}',
                                headers=_signed('{"type":"job.completed"}'))
            huge = _announce_body(receiver.port, 2 * 1024 * 1024)
            job = alice.post("/v1/jobs", json={"prompt": "smile", "webhook_url": hook}).json()
            services = client.app.state.services
            with services.write_session_factory() as session:
                claim = queue.claim(session, owner="test", lease_s=60)
                assert claim is not None
                queue.finish(session, claim, status=JobStatus.failed, error="no such model")
            assert arrived.wait(15)
        finally:
            receiver.close()
    assert forged.status_code == 400 and huge.startswith(b"HTTP/1.0 413")
    ((webhook_id, event),) = got
    assert webhook_id.startswith("msg_")
    assert event["type"] == "job.failed" and event["data"]["id"] == job["id"]
    assert event["data"]["error"] == "no such model"


def test_clipgan_client_listen_prints_verified_events(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CLIPGAN_WEBHOOK_SECRET": SIGNING}
    proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "client", "listen",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        body = json.dumps({"type": "job.completed", "data": {
            "id": "j1", "status": "succeeded", "image_url": "/v1/jobs/j1/image?exp=1&sig=s"}})
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = httpx.post(f"http://127.0.0.1:{port}/", content=body,
                                     headers=_signed(body, "whsec_" + "B" * 32))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.2)
        ok = httpx.post(f"http://127.0.0.1:{port}/", content=body,
                        headers=_signed(body, msg_id="msg_42"))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert refused.status_code == 400 and ok.status_code == 204
    assert json.loads(out.strip()) == {"webhook_id": "msg_42", "type": "job.completed",
                                       "job": "j1", "status": "succeeded",
                                       "image_url": "/v1/jobs/j1/image?exp=1&sig=s"}


@pytest.mark.parametrize("rewrite", ["{ts}.999", "+{ts}e0", " {ts}", "{ts}.0", "0{ts}x",
                                     "{ts}\u00b2", "{ts}e0"])
def test_a_rewritten_timestamp_is_refused_though_the_signature_still_matches(
        rewrite: str) -> None:
    """The signature covers the timestamp as a number; a rewritten spelling of that
    number must not pass for it (it would let a message be replayed under new text)."""
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
    headers = _signed(body)
    headers["webhook-timestamp"] = rewrite.format(ts=headers["webhook-timestamp"])
    with pytest.raises(WebhookVerificationError, match="digits"):
        verify(SIGNING, body.encode(), headers)


def test_messages_from_the_future_are_refused_beyond_clock_skew() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
    soon = datetime.fromtimestamp(time.time() + 30, UTC)
    later = datetime.fromtimestamp(time.time() + 290, UTC)
    assert verify(SIGNING, body.encode(), _signed(body, at=soon))["data"]["id"] == "j1"
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(SIGNING, body.encode(), _signed(body, at=later))


def test_a_replayed_message_is_recognised() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
    headers, seen = _signed(body, msg_id="msg_7"), ReplayGuard()
    verify(SIGNING, body.encode(), headers, seen=seen)
    with pytest.raises(WebhookReplayed):
        verify(SIGNING, body.encode(), headers, seen=seen)
    assert verify(SIGNING, body.encode(), _signed(body, msg_id="msg_8"), seen=seen)


def test_the_receiver_hands_a_message_over_once() -> None:
    got: list[str] = []
    receiver = Receiver(SIGNING, lambda webhook_id, _: got.append(webhook_id)).start()
    try:
        body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
        headers = _signed(body, msg_id="msg_9")
        answers = [httpx.post(f"http://127.0.0.1:{receiver.port}/", content=body,
                              headers=headers).status_code for _ in range(3)]
    finally:
        receiver.close()
    assert answers == [204, 204, 204] and got == ["msg_9"]


def test_slow_senders_hold_neither_more_threads_nor_longer_than_the_deadline() -> None:
    """Fifty senders that trickle their headers: the receiver serves a bounded number at
    once, cuts each at its deadline, and answers a real message afterwards."""
    receiver = Receiver(SIGNING, lambda *_: None, deadline_s=1.0, max_connections=8).start()
    before = threading.active_count()
    peak = before
    slow: list[socket.socket] = []
    try:
        for _ in range(50):
            conn = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
            slow.append(conn)
        started = time.monotonic()
        while time.monotonic() - started < 3:
            for conn in slow:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X")  # one byte at a time: each read arrives in time
            peak = max(peak, threading.active_count())
            time.sleep(0.2)
        body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
        ok = httpx.post(f"http://127.0.0.1:{receiver.port}/", content=body,
                        headers=_signed(body, msg_id="msg_10"), timeout=5)
        ended = 0
        for conn in slow:  # every one was closed by the receiver: refused, or cut off
            conn.settimeout(1)
            try:
                ended += conn.recv(4096) == b""
            except (ConnectionResetError, BrokenPipeError):
                ended += 1
    finally:
        for conn in slow:
            conn.close()
        receiver.close()
    assert peak - before <= 8
    assert ended == 50 and ok.status_code == 204
