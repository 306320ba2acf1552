"""Status reads served from memory, and the promises they keep: a login that ends, ends at
once on every worker, and a job that changes is never shown as it was once its change is
heard. Two web processes are two apps on one database, each with its own feed (poll,
PostgreSQL, Redis), login cache, kept views and event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.web_backend.helpers import Account, make_admin, stored
from web_backend.app import create_app
from web_backend.core.models import JobStatus
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.jobs.queue import LeaseLost
from web_backend.jobs.schemas import JobOut
from web_backend.live.kept_views import KeptViews
from web_backend.live.login_cache import LoginCache

# --- the cache's own rules ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _listening(max_age_s: float = 30) -> tuple[LoginCache, Clock]:
    clock = Clock()
    cache = LoginCache(max_age_s=max_age_s, clock=clock)
    cache.feed_connected()
    return cache, clock


def test_a_login_read_before_a_revocation_is_not_remembered_after_it() -> None:
    cache, _ = _listening()
    generation = cache.generation()      # a request begins its query ...
    cache.forget_users([7])              # ... a logout of user 7 is heard meanwhile ...
    cache.remember("s1", 7, generation)  # ... and the (now stale) answer comes back
    assert not cache.live("s1", 7)
    cache.remember("s1", 7, cache.generation())
    assert cache.live("s1", 7)


def test_forgetting_a_user_keeps_other_users_logins() -> None:
    cache, _ = _listening()
    for session_id, user_id in (("a1", 1), ("a2", 1), ("b1", 2)):
        cache.remember(session_id, user_id, cache.generation())
    cache.forget_users([1])
    assert not cache.live("a1", 1) and not cache.live("a2", 1)
    assert cache.live("b1", 2)
    assert not cache.live("b1", 1), "a login belongs to one user: another id is a miss"


def test_nothing_is_kept_while_the_feed_is_not_heard_nor_past_its_age() -> None:
    cache = LoginCache(max_age_s=30)
    cache.remember("s1", 1, cache.generation())
    assert not cache.live("s1", 1), "before the feed connects nothing is trusted"
    cache, clock = _listening(max_age_s=30)
    cache.remember("s1", 1, cache.generation())
    cache.feed_lost()
    assert not cache.live("s1", 1) and len(cache) == 0
    cache.remember("s1", 1, cache.generation())
    assert len(cache) == 0, "while the feed is lost nothing is remembered"
    cache.feed_connected()
    cache.remember("s1", 1, cache.generation())
    clock.now += 31
    assert not cache.live("s1", 1)
    assert LoginCache(max_age_s=0).enabled is False


def test_the_cache_stays_within_its_size() -> None:
    cache = LoginCache(max_age_s=30, max_entries=3)
    cache.feed_connected()
    for n in range(10):
        cache.remember(f"s{n}", n, cache.generation())
    assert len(cache) == 3 and cache.live("s9", 9) and not cache.live("s0", 0)


def _job(status: str = "running", *, step: int = 1, webhook: dict | None = None) -> JobOut:
    return JobOut.model_validate({
        "id": "j1", "status": status, "created_at": "2026-11-23T00:00:00Z",
        "started_at": None, "finished_at": None, "request": {"prompt": "smile"},
        "progress": {"step": step, "total": 4, "score": None}, "queue_position": None,
        "eta_s": None, "seed": None, "error": None, "timings": None, "image_url": None,
        "preview_url": None, "events_url": "/v1/jobs/j1/events?exp=1&sig=x",
        "webhook": webhook})


def test_an_active_view_read_before_a_change_is_not_kept_after_it() -> None:
    views = KeptViews()
    read_at = views.generation()           # a status read begins its query ...
    views.forget(["j1"])                   # ... the job's change is heard meanwhile ...
    assert views.put(7, _job(step=1), read_at=read_at) is None  # ... its answer is stale
    assert views.get("j1") is None
    assert views.put(7, _job(step=2), read_at=views.generation()) is not None
    assert views.get("j1") is not None
    views.forget(["other"])                # another job's change does not drop this one
    assert views.get("j1") is not None
    views.forget(["j1"])
    assert views.get("j1") is None


def test_active_views_age_out_finished_ones_stay_until_deleted_or_the_feed_is_lost() -> None:
    clock = Clock()
    views = KeptViews(active_max_age_s=1.0, clock=clock)
    views.put(7, _job("running"), read_at=views.generation())
    clock.now += 0.9
    assert views.get("j1") is not None
    clock.now += 0.2
    assert views.get("j1") is None, "a queue position or ETA is never more than 1 s old"
    views.put(7, _job("running"), read_at=views.generation())
    read_at = views.generation()
    views.forget_active()                  # the feed is lost: changes go unheard
    assert views.get("j1") is None and views.active == 0
    assert views.put(7, _job("running"), read_at=read_at) is None
    finished = _job("succeeded")
    assert views.put(7, finished, read_at=read_at) is None  # read before: it may be deleted
    views.put(7, finished, read_at=views.generation())  # read since: kept, whatever its age
    clock.now += 3600
    kept = views.get("j1")
    assert kept is not None and kept.owner_id == 7 and b'"status":"succeeded"' in kept.head
    views.forget(["j1"])  # deleted (heard like a change): gone
    assert views.get("j1") is None
    views.put(7, finished, read_at=views.generation())
    views.forget_active()  # the feed is lost: a deletion may go unheard
    assert views.get("j1") is None


def test_views_that_could_change_unannounced_are_not_kept() -> None:
    views = KeptViews()
    pending = {"url": "https://bot.example/hook", "events": ["completed"],
               "deliveries": [{"id": "msg_1", "event": "completed", "status": "pending",
                               "attempts": 0, "last_error": None, "delivered_at": None}]}
    for out in (_job("running", webhook=pending), _job("succeeded", webhook=pending)):
        assert views.put(7, out, read_at=views.generation()) is None  # deliveries move
    assert KeptViews(max_active=0).put(7, _job(), read_at=0) is None


def test_what_is_remembered_of_changes_stays_bounded() -> None:
    views = KeptViews(max_active=2)
    read_at = views.generation()
    for n in range(20):                   # more changes than it remembers ...
        views.forget([f"j{n}"])
    assert len(views._forgotten) <= 8
    assert views.put(7, _job(), read_at=read_at) is None  # ... so an older read is refused
    assert views.put(7, _job(), read_at=views.generation()) is not None


# --- two workers, one database ------------------------------------------------------------


class Workers:
    """Two web processes (apps with their own feed and cache) and a dispatcher's writes."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.a, self.b = create_app(settings), create_app(settings)
        for app in (self.a, self.b):  # only a commit or the feed drops an active view
            app.state.services.views.active_max_age_s = _LONG_LIFE_S

    @contextmanager
    def running(self) -> Iterator[tuple[TestClient, TestClient]]:
        with TestClient(self.a) as first, TestClient(self.b) as second:
            for app in (self.a, self.b):
                _until(lambda app=app: app.state.services.logins.enabled, "the feed connects")
            yield first, second

    def running_job(self, owner: Account) -> queue.Claim:
        """A job of ``owner``'s that worker a's dispatcher claimed."""
        r = owner.post("/v1/jobs", json={"prompt": "smile", "steps": 4})
        assert r.status_code == 202, r.text
        with self.a.state.services.write_session_factory() as session:
            claim = queue.claim(session, owner="test", lease_s=60)
        assert claim is not None and claim.job_id == r.json()["id"]
        return claim

    def progress(self, claim: queue.Claim, step: int) -> None:
        """Worker a records a step, as its dispatcher does (worker b hears of it)."""
        with self.a.state.services.write_session_factory() as session:
            queue.renew(session, claim, lease_s=60, progress_step=step)

    def finished_job(self, owner: Account) -> str:
        """A job of ``owner``'s that the ML side finished."""
        return _finished_job(self.a, owner)


def _finished_job(app: FastAPI, owner: Account) -> str:
    """A job of ``owner``'s that ``app``'s dispatcher finished."""
    r = owner.post("/v1/jobs", json={"prompt": "smile", "steps": 4})
    assert r.status_code == 202, r.text
    services = app.state.services
    with services.write_session_factory() as session:
        claim = queue.claim(session, owner="test", lease_s=60)
    assert claim is not None and claim.job_id == r.json()["id"]
    with services.write_session_factory() as session:
        queue.finish(session, claim, status=JobStatus.succeeded,
                     result_key=stored(services, claim.job_id, b"\x89PNG picture"), seed=3, score=0.3)
    return claim.job_id


def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


# what a process asks on its own, whatever the requests: the SQLite feed's tick and the
# webhook sender's look for due deliveries
_BACKGROUND = ("WHERE jobs.updated_at >", "WHERE users.logins_changed_at >",
               "FROM webhook_deliveries")


@contextmanager
def _statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL ``app`` sends while the block runs, but for its background work."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.split(" ")[0] in ("BEGIN", "COMMIT", "ROLLBACK"):
            return  # a transaction of its own (SQLite's explicit BEGIN): says nothing
        if not any(part in statement for part in _BACKGROUND):
            seen.append(statement)

    engine = app.state.services.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


_LONG_LIFE_S = 300.0  # the longest a login may be trusted: only the feed can end it sooner


@pytest.fixture
def workers(feed_settings: WebSettings) -> Workers:
    """Logins are cached for the longest allowed, so a refusal within seconds is the feed's
    doing, not an entry's age. How fast the feed is heard is measured in bench/logout.py,
    not asserted here (a loaded CI machine once took 1.2 s)."""
    auth = feed_settings.auth.model_copy(update={"login_cache_s": _LONG_LIFE_S})
    return Workers(feed_settings.model_copy(update={"auth": auth}))


def test_a_finished_job_read_again_costs_no_query(workers: Workers) -> None:
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        job_id = workers.finished_job(alice)
        headers = alice.auth
        read = second.get(f"/v1/jobs/{job_id}", headers=headers)
        assert read.status_code == 200, read.text
        with _statements(workers.b) as sql:
            again = second.get(f"/v1/jobs/{job_id}", headers=headers)
        assert again.status_code == 200
        assert sql == [], "a finished job read by a checked login needs no database"
        body, first_body = again.json(), read.json()
        links = ("image_url", "preview_url", "events_url")
        assert {k: v for k, v in body.items() if k not in links} == {
            k: v for k, v in first_body.items() if k not in links}
        image = second.get(body["image_url"])  # fresh signed links, usable signed out
        assert image.status_code == 200 and image.content == b"\x89PNG picture"
        bob = Account(second, "bob")
        with _statements(workers.b):
            assert bob.get(f"/v1/jobs/{job_id}").status_code == 404  # not bob's: as ever


def test_an_active_job_is_read_once_per_change(workers: Workers) -> None:
    """Repeated reads of a running job cost no query; a change is shown at once where
    it was written and as soon as the feed tells the other worker; never the old view."""
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        claim = workers.running_job(alice)
        url, headers = f"/v1/jobs/{claim.job_id}", alice.auth

        def step(client: TestClient) -> int:
            r = client.get(url, headers=headers)
            assert r.status_code == 200, r.text
            return int(r.json()["progress"]["step"])

        for client in (first, second, second):
            assert step(client) == 0
        with _statements(workers.b) as sql:
            assert step(second) == 0 and step(second) == 0
        assert sql == [], "an unchanged running job read again needs no database"
        for n in (1, 2, 3):
            workers.progress(claim, n)
            assert step(first) == n, "the worker that wrote a change shows it at once"
            _until(lambda n=n: step(second) == n, "the other worker hears the change",
                   timeout=_LONG_LIFE_S / 20)
            with _statements(workers.b) as sql:
                assert step(second) == n
            assert sql == []
        bob = Account(second, "bob")
        assert bob.get(url).status_code == 404  # a kept view is still only its owner's


@pytest.mark.parametrize("feed_settings", ["poll"], indirect=True)
def test_a_cancel_is_shown_at_once_by_the_worker_that_made_it(
        feed_settings: WebSettings) -> None:
    """The feed would tell this worker only 10 s later: its own commit drops the view."""
    feed = feed_settings.feed.model_copy(update={"poll_s": 10.0})
    workers = Workers(feed_settings.model_copy(update={"feed": feed}))
    with workers.running() as (_, second):
        alice = Account(second, "alice")
        r = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 4})
        url = f"/v1/jobs/{r.json()['id']}"
        for _ in range(2):
            assert alice.get(url).json()["status"] == "queued"
        assert alice.delete(url).json()["status"] == "cancelled"
        assert alice.get(url).json()["status"] == "cancelled"


def _logout(workers: Workers, first: TestClient, alice: Account) -> None:
    assert alice.post("/v1/auth/logout").status_code == 204


def _change_password(workers: Workers, first: TestClient, alice: Account) -> None:
    other = Account.__new__(Account)  # the same user signed in again on worker a
    other.__dict__.update(alice.__dict__)
    other.sign_in()
    r = other.put("/v1/users/me/password",
                  json={"current_password": alice.password, "new_password": "battery staple"})
    assert r.status_code == 204, r.text


def _disable(workers: Workers, first: TestClient, alice: Account) -> None:
    admin = make_admin(workers.a, Account(first, "root"))
    assert admin.post(f"/v1/admin/users/{alice.id}/disable").status_code == 200


def _replay_refresh_token(workers: Workers, first: TestClient, alice: Account) -> None:
    """A refresh token used twice was stolen: the whole login ends."""
    token = alice.tokens["refresh_token"]
    assert first.post("/v1/auth/refresh", json={"refresh_token": token}).status_code == 200
    assert first.post("/v1/auth/refresh", json={"refresh_token": token}).status_code == 401


def _delete_account(workers: Workers, first: TestClient, alice: Account) -> None:
    assert alice.delete_account().status_code == 204


def _admin_delete(workers: Workers, first: TestClient, alice: Account) -> None:
    admin = make_admin(workers.a, Account(first, "root"))
    assert admin.delete(f"/v1/admin/users/{alice.id}").status_code == 204


@pytest.mark.parametrize("end_login", [_logout, _change_password, _disable,
                                       _replay_refresh_token, _delete_account, _admin_delete],
                         ids=["logout", "password-change", "admin-disable", "refresh-replay",
                              "account-delete", "admin-delete"])
def test_an_ended_login_is_refused_at_once_by_every_worker(
        workers: Workers, end_login: Callable[[Workers, TestClient, Account], None]) -> None:
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        job_id = workers.finished_job(alice)
        url, headers = f"/v1/jobs/{job_id}", alice.auth
        for client in (first, second, second):  # both workers now trust this login
            assert client.get(url, headers=headers).status_code == 200
        assert workers.b.state.services.logins.hits >= 1
        end_login(workers, first, alice)
        assert first.get(url, headers=headers).status_code == 401  # where it happened: now
        _until(lambda: second.get(url, headers=headers).status_code == 401,
               "the other worker hears the login end", timeout=_LONG_LIFE_S / 20)
        for _ in range(3):  # and keeps refusing (a refusal is never cached as live)
            assert second.get(url, headers=headers).status_code == 401


def _libpq(settings: WebSettings) -> str:
    return settings.data.resolved_database_url.replace("postgresql+psycopg", "postgresql")


@pytest.mark.parametrize("feed_settings", ["postgres"], indirect=True)
def test_an_operators_sql_disable_is_heard_too(workers: Workers) -> None:
    """The trigger announces any change to the rows, not only what the app writes."""
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        job_id = workers.finished_job(alice)
        url, headers = f"/v1/jobs/{job_id}", alice.auth
        for _ in range(2):
            assert second.get(url, headers=headers).status_code == 200
        with psycopg.connect(_libpq(workers.settings), autocommit=True) as db:
            db.execute("UPDATE users SET is_active = false WHERE id = %s", (alice.id,))
        _until(lambda: second.get(url, headers=headers).status_code == 401,
               "the worker refuses the disabled account", timeout=_LONG_LIFE_S / 20)


def _drop_feed_connection(settings: WebSettings) -> None:
    """Kill the feed's own connection from outside, as a restart or a network cut would."""
    if settings.feed.kind == "postgres":
        with psycopg.connect(_libpq(settings), autocommit=True) as db:
            killed = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE query = 'LISTEN clipgan_jobs'").fetchall()
    else:
        client = redis.Redis.from_url(settings.data.redis_url or "")
        killed = [client.client_kill_filter(_type="pubsub")]
        client.close()
    assert killed and all(killed), "no feed connection to drop"


@pytest.mark.parametrize("feed_settings", ["postgres", "redis"], indirect=True)
def test_a_dropped_feed_empties_the_cache_until_it_is_heard_again(workers: Workers) -> None:
    """Changes made while a feed is away are not heard: nothing cached before survives."""
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        job_id = workers.finished_job(alice)
        url, headers = f"/v1/jobs/{job_id}", alice.auth
        logins, views = workers.b.state.services.logins, workers.b.state.services.views
        assert second.get(url, headers=headers).status_code == 200
        running = f"/v1/jobs/{workers.running_job(alice).job_id}"
        assert second.get(running, headers=headers).status_code == 200
        assert len(logins) == 1 and views.active == 1
        _drop_feed_connection(workers.settings)
        _until(lambda: len(logins) == 0, "the cache is emptied")
        assert views.active == 0, "a change made while the feed is away would go unseen"
        _until(lambda: logins.enabled, "the feed reconnects", timeout=15)
        with _statements(workers.b) as sql:
            assert second.get(url, headers=headers).status_code == 200
        assert sql, "the first read after the gap checks the login in the database"
        assert len(logins) == 1


class _Follower:
    """An event stream read on its own thread: what it got, and whether it has ended."""

    def __init__(self, client: TestClient, url: str, **kw: Any) -> None:
        import threading

        self.lines: list[str] = []
        self.status = 0
        self.ended = threading.Event()

        def follow() -> None:
            try:
                with client.stream("GET", url, **kw) as response:
                    self.status = response.status_code
                    for line in response.iter_lines():
                        self.lines.append(line)
            except Exception:  # the test's client closed under a stream still open
                pass
            finally:
                self.ended.set()

        threading.Thread(target=follow, daemon=True).start()

    def events(self) -> list[str]:
        return [line.removeprefix("event: ") for line in list(self.lines)
                if line.startswith("event: ")]


@pytest.mark.parametrize("end_login", [_logout, _disable, _delete_account],
                         ids=["logout", "admin-disable", "account-delete"])
def test_an_open_stream_ends_with_its_login_on_every_worker(
        workers: Workers, end_login: Callable[[Workers, TestClient, Account], None]) -> None:
    """A stream opened on worker b by a login that then ends on worker a sends nothing
    more (no progress, no freshly signed link); on a disable, streams opened with the
    account's signed links end too."""
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        claim = workers.running_job(alice)
        url = f"/v1/jobs/{claim.job_id}"
        events_url = second.get(url, headers=alice.auth).json()["events_url"]
        by_token = _Follower(second, f"{url}/events", headers=alice.auth)
        by_link = _Follower(second, events_url)
        _until(lambda: by_token.events() == ["status"] and by_link.events() == ["status"],
               "both streams start")
        workers.progress(claim, 1)
        _until(lambda: "progress" in by_token.events(), "the stream follows the job")
        end_login(workers, first, alice)
        assert by_token.ended.wait(_LONG_LIFE_S / 20), "the stream outlived its login"
        if end_login is not _logout:
            assert by_link.ended.wait(10), "a disabled or deleted account's link still streams"
        seen = len(by_token.lines)
        with contextlib.suppress(LeaseLost):  # a deleted job takes no more progress
            workers.progress(claim, 2)
        time.sleep(0.5)
        assert len(by_token.lines) == seen and by_token.events().count("progress") == 1
        assert second.get(f"{url}/events", headers=alice.auth).status_code == 401
    by_link.ended.wait(10)


class _Proxy:
    """A TCP proxy to Redis that can cut every connection through it (a partition)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.cut = threading.Event()
        self._conns: list[Any] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def partition(self) -> None:
        import socket

        self.cut.set()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def close(self) -> None:
        self.partition()
        self.sock.close()


@pytest.mark.parametrize("feed_settings", ["redis"], indirect=True)
def test_a_login_ended_on_a_worker_cut_off_from_redis_is_refused_by_the_others(
        feed_settings: WebSettings) -> None:
    """Worker a loses Redis, worker b keeps it: a's publish of the logout cannot go out,
    so a counts its feed as lost (its cache off) and b reads the change from the
    database within its tick, not after the cache's 300 s."""
    from urllib.parse import urlparse

    target = urlparse(feed_settings.data.redis_url)
    proxy = _Proxy((target.hostname or "127.0.0.1", target.port or 6379))
    auth = feed_settings.auth.model_copy(update={"login_cache_s": _LONG_LIFE_S})
    settings_b = feed_settings.model_copy(update={"auth": auth})
    data_a = settings_b.data.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
    a, b = create_app(settings_b.model_copy(update={"data": data_a})), create_app(settings_b)
    try:
        with TestClient(a) as first, TestClient(b) as second:
            for app in (a, b):
                _until(lambda app=app: app.state.services.logins.enabled, "the feed connects")
            alice = Account(second, "alice")
            job_id = _finished_job(b, alice)
            url, headers = f"/v1/jobs/{job_id}", alice.auth
            for client in (first, second, second):
                assert client.get(url, headers=headers).status_code == 200
            proxy.partition()
            assert first.post("/v1/auth/logout", headers=headers).status_code == 204
            assert first.get(url, headers=headers).status_code == 401  # where it happened
            _until(lambda: second.get(url, headers=headers).status_code == 401,
                   "the other worker refuses the ended login", timeout=15)
            _until(lambda: not a.state.services.logins.enabled, "a counts its feed as lost")
    finally:
        proxy.close()


def test_a_revoked_api_key_is_refused_by_every_worker(workers: Workers) -> None:
    """Both workers trust the key from memory; a revocation on worker a reaches b through
    the feed (how soon: bench/logout.py --keys)."""
    with workers.running() as (first, second):
        alice = Account(first, "alice")
        made = alice.post("/v1/users/me/api-keys", json={"name": "bot"}).json()
        job_id = workers.finished_job(alice)
        url, key = f"/v1/jobs/{job_id}", {"Authorization": f"Bearer {made['key']}"}
        for client in (first, second, second):
            assert client.get(url, headers=key).status_code == 200
        with _statements(workers.b) as sql:
            assert second.get(url, headers=key).status_code == 200
        assert sql == [], "a key checked before is trusted from memory"
        assert alice.delete(f"/v1/users/me/api-keys/{made['id']}").status_code == 204
        assert first.get(url, headers=key).status_code == 401
        _until(lambda: second.get(url, headers=key).status_code == 401,
               "the other worker hears the revocation", timeout=_LONG_LIFE_S / 20)
