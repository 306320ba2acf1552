"""Where a web process hears that jobs changed: PostgreSQL, Redis, or a poller.

Each source is an async iterator of batches of changed job ids (and ``user:<id>``
for a user whose logins changed, see :mod:`web_backend.live.login_cache`), of ``LOST``
when its connection fails, and of ``RESYNC`` whenever it may have missed some (it
just connected, or reconnected after the database or Redis restarted): the feed then
re-reads every job it follows from its row, so a lost notification costs a query,
never an event, and the login cache, off since ``LOST``, starts again empty.

* :class:`PostgresChanges`: ``LISTEN`` on the channel the ``jobs`` trigger notifies
  (migration 0004), in the writing transaction, so a notification never arrives
  before the row it announces.
* :class:`RedisChanges`: pub/sub; writers publish after their commit
  (:func:`web_backend.core.changes.announce_commits` with :func:`publish_each` and
  :func:`publish_users`). Works with SQLite too.
* :class:`PollChanges`: SQLite alone. One query per tick for the whole process:
  rows whose ``updated_at`` moved since the last look.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import make_url, select
from sqlalchemy.orm import Session, sessionmaker

from web_backend.core.models import Deletion, Job, User, utcnow

__all__ = [
    "LOST",
    "PG_CHANNEL",
    "REDIS_CHANNEL",
    "RESYNC",
    "USER_PREFIX",
    "ChangeBatch",
    "ChangeSource",
    "FeedKind",
    "LoginChanges",
    "PollChanges",
    "PostgresChanges",
    "RedisChanges",
    "RedisPublisher",
    "publish_each",
    "publish_users",
    "resolve_feed_kind",
]

log = logging.getLogger(__name__)

PG_CHANNEL: Final = "clipgan_jobs"     # migration 0004's trigger notifies here
REDIS_CHANNEL: Final = "clipgan:jobs"
RESYNC: Final = None                   # "re-read everything you follow"
LOST: Final = "lost"                   # "changes are not heard until the next RESYNC"
USER_PREFIX: Final = "user:"           # a message naming a user whose logins changed
ChangeBatch = frozenset[str] | None | Literal["lost"]
ChangeSource = Callable[[], AsyncIterator[ChangeBatch]]
FeedKind = Literal["postgres", "redis", "poll"]

_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # reconnect backoff; the feed resyncs after


def resolve_feed_kind(setting: str, database_url: str, redis_url: str | None) -> FeedKind:
    """``auto``: the database's own notifications when it has them, else Redis, else poll."""
    postgres = database_url.startswith("postgresql")
    if setting == "auto":
        return "postgres" if postgres else "redis" if redis_url else "poll"
    if setting == "postgres" and not postgres:
        raise ValueError("CLIPGAN_JOB_FEED=postgres needs a PostgreSQL CLIPGAN_DATABASE_URL")
    if setting == "redis" and not redis_url:
        raise ValueError("CLIPGAN_JOB_FEED=redis needs CLIPGAN_REDIS_URL")
    return setting  # type: ignore[return-value]


async def _backoff(attempt: int, what: str, exc: BaseException) -> None:
    delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
    log.warning("job feed: %s lost (%s: %s); reconnecting in %.1f s", what,
                type(exc).__name__, exc, delay)
    await asyncio.sleep(delay)


class PostgresChanges:
    """``LISTEN clipgan_jobs`` on a connection of its own (psycopg 3, async)."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)

    async def __call__(self) -> AsyncIterator[ChangeBatch]:
        import psycopg

        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, connect_timeout=5,
                        keepalives=1, keepalives_idle=10, keepalives_interval=5,
                        keepalives_count=3) as conn:
                    await conn.execute(f"LISTEN {PG_CHANNEL}")
                    attempt = 0
                    yield RESYNC  # whatever changed before we listened
                    async for note in conn.notifies():
                        yield frozenset((note.payload,))
            except (psycopg.Error, OSError) as exc:
                yield LOST
                await _backoff(attempt, "PostgreSQL LISTEN connection", exc)
                attempt += 1


class LoginChanges:
    """Users whose logins changed since a time, read from ``users.logins_changed_at``
    (what :func:`~web_backend.core.changes.logins_changed` moves in the same
    transaction): the database's own record, for when a message may have been lost."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def since(self, session: Session, moment: datetime) -> list[tuple[str, datetime]]:
        """Users whose logins changed, and users deleted (their rows are gone: the
        ``deletions`` record says so)."""
        changed = [(f"{USER_PREFIX}{user_id}", at) for user_id, at in session.execute(
            select(User.id, User.logins_changed_at)
            .where(User.logins_changed_at > moment)).all() if at is not None]
        return changed + [(subject, at) for subject, at in session.execute(
            select(Deletion.subject, Deletion.deleted_at)
            .where(Deletion.deleted_at > moment,
                   Deletion.subject.startswith(USER_PREFIX, autoescape=True))).all()]


class RedisChanges:
    """Subscribed to ``clipgan:jobs``. Each (re)subscription is answered by a
    ``subscribe`` message, which is where a gap may be: resync there.

    Publishing is best effort after a commit, so two more things keep the promise that a
    cached login never outlives its end:

    * ``publisher``: this process's own publisher. While a message of ours waits to be
      published again (Redis did not take it), this feed counts as lost here too (the
      login cache is off) and the message is retried every tick; once it is out, resync.
    * ``logins`` (with ``wanted``): while anything is cached or watched, every tick also
      reads which users' logins changed in the database. A worker that Redis can reach
      while the worker that ended a login cannot (a partition) still hears it within a
      tick, not after the cache's age.
    """

    def __init__(self, redis_url: str, *, publisher: RedisPublisher | None = None,
                 logins: LoginChanges | None = None, wanted: Callable[[], bool] = bool,
                 tick_s: float = 1.0, overlap_s: float = 2.0) -> None:
        self.redis_url = redis_url
        self.publisher = publisher
        self.logins = logins
        self.wanted = wanted
        self.tick_s = tick_s
        self.overlap = timedelta(seconds=overlap_s)

    async def __call__(self) -> AsyncIterator[ChangeBatch]:
        from redis import asyncio as aioredis
        from redis.exceptions import RedisError

        attempt = 0
        seen: dict[str, datetime] = {}
        since = utcnow() - self.overlap
        while True:
            client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5,
                                             health_check_interval=10)
            unsent = False  # told the feed that one of our messages is not out yet
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(REDIS_CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=self.tick_s)
                        if message is not None and message["type"] == "subscribe":
                            attempt = 0
                            yield RESYNC
                        elif message is not None and message["type"] == "message":
                            data = message["data"]
                            yield frozenset((data.decode() if isinstance(data, bytes)
                                             else str(data),))
                        if self.publisher is not None:
                            if self.publisher.waiting and not unsent:
                                unsent = True
                                yield LOST
                            if unsent and await asyncio.to_thread(self.publisher.flush):
                                unsent = False
                                yield RESYNC
                        if self.logins is not None:
                            if not self.wanted():
                                since, seen = utcnow() - self.overlap, {}
                                continue
                            tick = utcnow()
                            rows = await asyncio.to_thread(_read_since, self.logins, since)
                            changed = frozenset(k for k, at in rows if seen.get(k) != at)
                            seen, since = dict(rows), tick - self.overlap
                            if changed:
                                yield changed
            except (RedisError, OSError) as exc:
                yield LOST
                await _backoff(attempt, "Redis subscription", exc)
                attempt += 1
            finally:
                await client.aclose()



def _read_since(logins: LoginChanges, moment: datetime) -> list[tuple[str, datetime]]:
    with logins.session_factory() as session:
        return logins.since(session, moment)


class PollChanges:
    """One query per tick for all jobs changed since the previous tick, watched or not
    (a tick costs the same for 1 or 1,000 streams), and one for users whose logins
    changed, only while anything is watched or cached (``watched``).

    Rows are seen again for ``overlap`` after their change (a write computes its
    timestamp before it commits), and reported once per timestamp.
    """

    def __init__(self, session_factory: sessionmaker[Session], watched: Callable[[], bool], *,
                 interval_s: float, overlap_s: float = 2.0) -> None:
        self.session_factory = session_factory
        self.watched = watched
        self.interval_s = interval_s
        self.overlap = timedelta(seconds=overlap_s)

    def _changed_since(self, since: datetime) -> list[tuple[str, datetime]]:
        with self.session_factory() as session:
            jobs = session.execute(select(Job.id, Job.updated_at)
                                   .where(Job.updated_at > since)).all()
            deleted = session.execute(  # rows that are gone show no change of their own
                select(Deletion.subject, Deletion.deleted_at)
                .where(Deletion.deleted_at > since,
                       ~Deletion.subject.startswith(USER_PREFIX, autoescape=True))).all()
            users = LoginChanges(self.session_factory).since(session, since)
        return [(job_id, updated) for job_id, updated in [*jobs, *deleted]] + users

    async def __call__(self) -> AsyncIterator[ChangeBatch]:
        seen: dict[str, datetime] = {}
        since = utcnow() - self.overlap
        yield RESYNC
        failures = 0
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.watched():
                since, seen = utcnow() - self.overlap, {}
                continue
            tick = utcnow()
            try:
                rows = await asyncio.to_thread(self._changed_since, since)
            except Exception as exc:  # the database is busy or gone: try again, then resync
                failures += 1
                log.warning("job feed: poll failed (%s: %s)", type(exc).__name__, exc)
                if failures == 1:
                    yield LOST
                continue
            if failures:
                failures = 0
                yield RESYNC
            changed = frozenset(key for key, updated in rows if seen.get(key) != updated)
            seen = dict(rows)
            since = tick - self.overlap
            if changed:
                yield changed


# --- telling the other processes: Redis publishing after this process's commits ---

class RedisPublisher:
    """Publishes feed messages after this process's commits.

    The row is already committed when a message goes out, so a message Redis does not
    take is not dropped: it is kept (up to ``max_waiting``) and sent again every tick of
    :class:`RedisChanges`, which meanwhile reports this feed as lost (this process's
    login cache stays off until the others can have heard). Each call gives up after
    ``timeout_s``: a commit never waits on an unreachable Redis for long.
    """

    def __init__(self, redis_url: str, *, timeout_s: float = 1.0,
                 max_waiting: int = 10_000) -> None:
        import redis

        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                            socket_connect_timeout=timeout_s)
        self._error = redis.RedisError
        self.max_waiting = max_waiting
        self._waiting: dict[str, None] = {}  # ordered, without duplicates
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _send(self, message: str) -> bool:
        try:
            self._client.publish(REDIS_CHANNEL, message)
        except self._error as exc:
            log.warning("job feed: could not publish %s (%s); kept to send again",
                        message, exc)
            return False
        return True

    def publish(self, message: str) -> bool:
        """Publish now, or keep it for :meth:`flush` (and say False)."""
        if self._waiting or not self._send(message):
            with self._lock:
                self._waiting[message] = None
                while len(self._waiting) > self.max_waiting:  # the oldest: the logins poll
                    self._waiting.pop(next(iter(self._waiting)))  # of the others has it
            return False
        return True

    def flush(self) -> bool:
        """Send what waits, oldest first; True when nothing waits any more."""
        with self._lock:
            waiting = list(self._waiting)
        for message in waiting:
            if not self._send(message):
                return False
            with self._lock:
                self._waiting.pop(message, None)
        return not self._waiting


def publish_each(publish: Callable[[str], bool]) -> Callable[[frozenset[str]], None]:
    """A ``jobs`` listener for :func:`~web_backend.core.changes.announce_commits` that
    publishes each job on Redis (what Redis does not take, the publisher keeps)."""

    def publish_jobs(job_ids: frozenset[str]) -> None:
        for job_id in job_ids:
            publish(job_id)

    return publish_jobs


def publish_users(publish: Callable[[str], bool]) -> Callable[[frozenset[int]], None]:
    """A ``logins`` listener for :func:`~web_backend.core.changes.announce_commits` that
    publishes ``user:<id>`` for each user (what Redis does not take, the publisher keeps)."""

    def publish_logins(user_ids: frozenset[int]) -> None:
        for user_id in user_ids:
            publish(f"{USER_PREFIX}{user_id}")

    return publish_logins
