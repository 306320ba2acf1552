"""The change feed behind event streams, over each transport, with real databases and Redis.

Job changes are written the way a dispatcher in another process writes them: its own
services (engine, session factories, Redis publisher) and the queue's transitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.web_backend.helpers import Account, make_admin, stored
from web_backend.app import build_services, create_app
from web_backend.core.models import JobStatus
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.jobs.queue import Claim
from web_backend.services import Services


@pytest.fixture
def app(feed_settings: WebSettings) -> FastAPI:
    """conftest's ``client`` and ``alice`` use this app."""
    return create_app(feed_settings)


@pytest.fixture
def elsewhere(feed_settings: WebSettings) -> Iterator[Services]:
    """Another process's services (a standalone dispatcher): writes reach the streams only
    through the feed."""
    services = build_services(feed_settings)
    yield services
    services.engine.dispose()


class Stream:
    """An event stream read on a thread: (event, id, data) as they arrive."""

    def __init__(self, client: TestClient, url: str, headers: dict[str, str] | None = None,
                 ) -> None:
        self.events: list[tuple[str, int | None, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(client, url, headers or {}),
                                       daemon=True)
        self.thread.start()

    def _read(self, client: TestClient, url: str, headers: dict[str, str]) -> None:
        name, event_id = None, None
        with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line.removeprefix("id: "))
                elif line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: ") and name:
                    with self.arrived:
                        self.events.append((name, event_id, json.loads(line[6:])))
                        self.arrived.notify_all()
                    name = event_id = None

    def wait_for(self, done: Callable[[list[tuple[str, int | None, dict[str, Any]]]], bool],
                 timeout: float = 10) -> list[tuple[str, int | None, dict[str, Any]]]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: done(self.events), timeout):
                raise AssertionError(f"not seen within {timeout} s; got {self.names}")
            return list(self.events)

    def done(self, timeout: float = 10) -> list[tuple[str, int | None, dict[str, Any]]]:
        """Until the ``done`` event, and the response has ended."""
        events = self.wait_for(lambda e: e[-1][0] == "done", timeout)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the response did not end after done"
        return events

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def progress(self) -> list[int]:
        return [data["progress"]["step"] for name, _, data in self.events
                if name in ("status", "progress")]


def _write(services: Services, transition: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    with services.write_session_factory() as session:
        return transition(session, *args, **kw)


def _claim(services: Services) -> Claim:
    claim = _write(services, queue.claim, owner="elsewhere", lease_s=60)
    assert claim is not None
    return claim


def _submit(alice: Account, steps: int = 6) -> dict[str, Any]:
    r = alice.post("/v1/jobs", json={"prompt": "smile", "steps": steps})
    assert r.status_code == 202, r.text
    return r.json()


def _open_streams(app: FastAPI, client: TestClient, url: str, n: int,
                  timeout: float = 10) -> list[Stream]:
    """``n`` streams of one job, each past its first event."""
    streams = [Stream(client, url) for _ in range(n)]
    deadline = time.monotonic() + timeout
    while app.state.services.feed.watchers < n:
        assert time.monotonic() < deadline, "streams did not open"
        time.sleep(0.02)
    for stream in streams:
        stream.wait_for(lambda e: len(e) == 1)
    return streams


def test_a_stream_follows_a_job_run_by_another_process(
        app: FastAPI, client: TestClient, alice: Account, elsewhere: Services) -> None:
    job = _submit(alice, steps=4)
    stream = Stream(client, job["events_url"])
    stream.wait_for(lambda e: len(e) == 1)
    claim = _claim(elsewhere)
    stream.wait_for(lambda e: e[-1][2]["status"] == "running")
    for step in range(1, 5):
        preview = (stored(elsewhere, claim.job_id, b"preview %d" % step)
                   if step == 2 else None)
        _write(elsewhere, queue.renew, claim, lease_s=60, progress_step=step, preview_key=preview)
        stream.wait_for(lambda e, step=step: e[-1][2]["progress"]["step"] == step)
    result = stored(elsewhere, claim.job_id, b"picture")
    _write(elsewhere, queue.finish, claim, status=JobStatus.succeeded, result_key=result,
           seed=7, score=0.3)
    events = stream.done()
    assert stream.names == ["status", "status", "progress", "progress", "preview", "progress",
                            "progress", "status", "done"]
    assert stream.progress() == [0, 0, 1, 2, 3, 4, 4]
    assert [event_id for _, event_id, _ in events] == [0, 0, 1, 2, 2, 3, 4, 4, 4]
    assert events[-1][2]["image_url"] is not None and events[4][2]["preview_url"] is not None


def test_idle_streams_cost_no_reads_and_a_change_is_read_once_for_all(
        app: FastAPI, client: TestClient, alice: Account, elsewhere: Services) -> None:
    feed = app.state.services.feed
    job = _submit(alice)
    claim = _claim(elsewhere)
    streams = _open_streams(app, client, job["events_url"], 8)
    time.sleep(0.5)  # the poller re-reports the claim once (its look-back overlap)
    reads = feed.loads
    time.sleep(1.5)  # idle: no job is read, whatever the number of streams
    assert feed.loads == reads
    _write(elsewhere, queue.renew, claim, lease_s=60)  # a lease renewal: nobody is woken
    time.sleep(1.0)
    assert all(len(stream.events) == 1 for stream in streams)
    reads = feed.loads
    _write(elsewhere, queue.renew, claim, lease_s=60, progress_step=1)
    for stream in streams:
        stream.wait_for(lambda e: e[-1][0] == "progress")
    assert feed.loads - reads == 1  # one read for the eight
    _write(elsewhere, queue.finish, claim, status=JobStatus.cancelled, error="cancelled")
    for stream in streams:
        stream.done()
    _streaming_ends(app)


def _streaming_ends(app: FastAPI, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    services = app.state.services
    while services.feed.watchers or services.streams.open_streams:
        assert time.monotonic() < deadline, "streams still open"
        time.sleep(0.02)


def test_a_reconnecting_client_gets_no_progress_twice(
        app: FastAPI, client: TestClient, alice: Account, elsewhere: Services) -> None:
    job = _submit(alice)
    claim = _claim(elsewhere)
    _write(elsewhere, queue.renew, claim, lease_s=60, progress_step=2)
    # the browser saw up to id 4 (progress 4) before its connection dropped; a lagging
    # replica or a re-read older row must not make it step back
    stream = Stream(client, job["events_url"], headers={"Last-Event-ID": "4"})
    stream.wait_for(lambda e: len(e) == 1)
    for step in (3, 4, 5):
        _write(elsewhere, queue.renew, claim, lease_s=60, progress_step=step)
        time.sleep(0.4)
    stream.wait_for(lambda e: e[-1][0] == "progress")
    _write(elsewhere, queue.finish, claim, status=JobStatus.cancelled, error="cancelled")
    stream.done()
    assert stream.names == ["status", "progress", "status", "done"]
    assert stream.progress() == [2, 5, 5]
    refused = alice.get(job["events_url"], headers={"Last-Event-ID": "yesterday"})
    assert refused.status_code == 422


def test_a_followed_job_is_still_refused_once_its_owner_is_disabled(
        app: FastAPI, client: TestClient, alice: Account, elsewhere: Services) -> None:
    """Opening a stream reads the job afresh even when this process already follows it:
    a cached view must not keep a disabled account's links working; and the stream that
    was open ends, sending nothing more."""
    job = _submit(alice)
    stream = Stream(client, job["events_url"])
    stream.wait_for(lambda e: len(e) == 1)
    admin = make_admin(app, Account(client, "root"))
    assert admin.post(f"/v1/admin/users/{alice.id}/disable").status_code == 200
    refused = client.get(job["events_url"])
    assert refused.status_code == 403, refused.text
    assert refused.json() == {"detail": "this link is invalid or has expired"}
    missing = client.get(job["events_url"].replace(job["id"], "no-such-job"))
    assert missing.status_code == 403  # the link's signature covers the job id
    stream.thread.join(10)
    assert not stream.thread.is_alive(), "a disabled account's stream went on"
    claim = _claim(elsewhere)
    _write(elsewhere, queue.finish, claim, status=JobStatus.cancelled, error="cancelled")
    assert stream.names == ["status"]


@pytest.mark.parametrize("feed_settings", ["poll"], indirect=True)
def test_an_app_served_again_by_a_new_event_loop_still_streams(
        app: FastAPI, elsewhere: Services) -> None:
    """Each TestClient (and schemathesis, and a restarted lifespan) brings its own loop."""
    with TestClient(app) as first:
        job = _submit(Account(first, "alice"))
    with TestClient(app) as second:
        stream = Stream(second, job["events_url"])
        stream.wait_for(lambda e: len(e) == 1)
        claim = _claim(elsewhere)
        _write(elsewhere, queue.finish, claim, status=JobStatus.cancelled, error="cancelled")
        assert stream.done()[-1][2]["status"] == "cancelled"


def _restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, timeout=120)


def _stop_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], timeout=30)


def _start_redis() -> None:
    """The machine's own command for it (see the env notes)."""
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                    "--port", "6379", "--save", "", "--appendonly", "no", "--dir",
                    "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
                   check=True, timeout=30)
    deadline = time.monotonic() + 30
    while subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True,
                         timeout=10).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "Redis did not come back"
        time.sleep(0.2)


def _write_when_possible(services: Services, *args: Any, **kw: Any) -> None:
    deadline = time.monotonic() + 60
    while True:  # the writer's pool notices a database restart on its own time
        try:
            _write(services, *args, **kw)
            return
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("feed_settings", ["postgres", "redis"], indirect=True)
def test_streams_survive_a_restart_of_the_feed_service(
        feed_settings: WebSettings, app: FastAPI, client: TestClient, alice: Account,
        elsewhere: Services) -> None:
    job = _submit(alice)
    claim = _claim(elsewhere)
    streams = _open_streams(app, client, job["events_url"], 3)
    if feed_settings.feed.kind == "redis":
        _stop_redis()
        try:  # committed while Redis is away: its announcement is lost
            _write(elsewhere, queue.renew, claim, lease_s=60, progress_step=1)
        finally:
            _start_redis()
        for stream in streams:  # the feed re-reads what it follows when it resubscribes
            stream.wait_for(lambda e: e[-1][2]["progress"]["step"] == 1, timeout=30)
    else:
        _restart_postgres()
    _write_when_possible(elsewhere, queue.renew, claim, lease_s=60, progress_step=2)
    for stream in streams:
        stream.wait_for(lambda e: e[-1][2]["progress"]["step"] == 2, timeout=30)
    _write(elsewhere, queue.finish, claim, status=JobStatus.cancelled, error="cancelled")
    for stream in streams:
        stream.done(timeout=30)
