"""What web tests do as users: a signed-in account, waiting for a job, an admin."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

SECRET = secrets.token_hex(32)  # the test apps' signing key

# for tests of what does not depend on the database (the fixture's default is both)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Account:
    """A registered, signed-in user, as a test sees one."""

    def __init__(self, client: TestClient, username: str, password: str = "correct horse") -> None:
        self.client = client
        self.username = username
        self.password = password
        r = client.post("/v1/users", json={"username": username, "email": f"{username}@x.io",
                                           "password": password})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        self.sign_in()

    def sign_in(self) -> dict[str, Any]:
        r = self.client.post("/v1/auth/token",
                             data={"username": self.username, "password": self.password})
        assert r.status_code == 200, r.text
        self.tokens = r.json()
        return self.tokens

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    def get(self, path: str, **kw: Any):
        return self.client.get(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw: Any):
        return self.client.post(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def put(self, path: str, **kw: Any):
        return self.client.put(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def delete(self, path: str, **kw: Any):
        """DELETE, with a body if ``json`` is given (as ``DELETE /v1/users/me`` takes)."""
        return self.client.request("DELETE", path,
                                   headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def delete_account(self, password: str | None = None):
        return self.delete("/v1/users/me", json={"password": password or self.password})


def wait_for(account: Account, job_id: str, predicate: Callable[[dict], bool],
             timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = account.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job never reached the state: {job}")


def make_admin(app: FastAPI, account: Account) -> Account:
    from web_backend.core.models import User

    # a writing session: on SQLite it waits its turn behind the app's own background
    # writers (a read that turns into a write would fail at once instead)
    with app.state.services.write_session_factory() as session:
        session.get(User, account.id).is_admin = True
        session.commit()
    return account


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records what webhooks bring and answers each
    with the next status of ``answers`` (the last one repeats)."""

    def __init__(self, answers: tuple[int, ...] = (204,), port: int = 0) -> None:
        import http.server
        import threading

        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        answers_left = list(answers)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.arrived:
                    receiver.calls.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                status = answers_left.pop(0) if len(answers_left) > 1 else answers_left[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/clipgan"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 15) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"{len(self.calls)} webhook calls, expected {count}")
            return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TricklingReceiver:
    """A webhook receiver that answers one byte every ``interval_s`` seconds (each read
    arrives in time, the whole answer never does): it records when each call came and
    when the caller hung up."""

    def __init__(self, interval_s: float = 0.5) -> None:
        import socket
        import threading

        self.interval_s = interval_s
        self.connected: list[float] = []
        self.hung_up: list[float] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: Any) -> None:
        with self._lock:
            self.connected.append(time.monotonic())
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-padding: " + b"x" * 10_000
        import select

        try:
            conn.recv(65536)
            for byte in answer:
                # wait one interval, but notice at once when the caller hangs up
                readable, _, _ = select.select([conn], [], [], self.interval_s)
                if self._closing.is_set() or (readable and not conn.recv(65536)):
                    break
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            with self._lock:
                self.hung_up.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._closing.set()
        self.sock.close()


def stored(services: Any, owner: str, data: bytes) -> str:
    """Store ``data`` for ``owner`` (a job id) as the dispatcher does (pinned, then put)."""
    return asyncio.run(services.blobs.save(owner, data))


def read_blob(services: Any, key: str) -> bytes:
    return asyncio.run(services.blobs.get(key))
