"""One change feed per web process: job changes read once, fanned out to every stream.

An open ``/events`` stream costs nothing while its job is idle: it waits on an
:class:`asyncio.Event`. The feed hears which jobs changed (a source from
:mod:`web_backend.live.sources`), reads the ones somebody here follows, in one query
per batch, and wakes only their watchers. So the database sees work proportional to
changes, not to watchers, and a job followed by 50 tabs is read once per change.

The feed keeps the latest view of each followed job and nothing else; it forgets a
job when its last watcher leaves. It also carries what the process's login cache must
hear (:mod:`web_backend.live.login_cache`): users whose logins changed, and whether the
source is connected at all; and it drops the kept view of every job that changed
(:mod:`web_backend.live.kept_views`), followed or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ml_backend.text import parse_decimal
from web_backend.jobs.schemas import JobOut
from web_backend.live.kept_views import KeptViews
from web_backend.live.login_cache import LoginCache
from web_backend.live.sources import RESYNC, USER_PREFIX, ChangeBatch, ChangeSource

__all__ = ["JobFeed", "JobView", "Visible", "Watch", "visible_state"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobView:
    """A job as its watchers see it, built once per change for all of them."""

    out: JobOut                   # links inside expire at the usual TTL; streams re-sign
    preview_key: str | None
    owner_id: int                 # whose streams these count as (the per-account cap)
    owner_active: bool            # a disabled account's links open nothing

    @property
    def visible(self) -> Visible:
        out = self.out
        return visible_state(status=out.status, step=out.progress.step,
                             total=out.progress.total, score=out.progress.score,
                             preview_key=self.preview_key, has_image=out.image_url is not None,
                             error=out.error)


Visible = tuple[Any, ...]


def visible_state(*, status: str, step: int, total: int, score: float | None,
                  preview_key: str | None, has_image: bool, error: str | None) -> Visible:
    """What a change must touch to be worth an event (not the ETA, not the queue position,
    not the lease): the same from a view and from a row's columns, so a resync can
    compare cheap columns instead of rebuilding views."""
    return (str(status), step, total, score, preview_key, has_image, error)


ViewLoader = Callable[[frozenset[str]], dict[str, JobView | None]]  # None: no such job
VisibleLoader = Callable[[frozenset[str]], dict[str, Visible]]    # missing: no such job


class Watch:
    """One stream's subscription: ``changed`` is set when its job's view changed (or the
    server is stopping, or ``login_changed``); ``view`` is the latest.

    ``viewer``: the user whose login opened the stream (None for a signed link). When the
    feed hears that this user's logins changed (a logout, a password change, a disable,
    a revoked key), ``login_changed`` is set: the stream checks its login again.
    """

    def __init__(self, feed: JobFeed, job_id: str, viewer: int | None = None) -> None:
        self.feed = feed
        self.job_id = job_id
        self.viewer = viewer
        self.login_changed = False
        self.changed = asyncio.Event()
        self._read: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def view(self) -> JobView | None:
        return self.feed._views.get(self.job_id)

    async def ready(self) -> JobView | None:
        """The job as read after this watch began (so an access check on it is current)."""
        if not self.feed.running:  # nobody batches reads: read it here
            await self.feed._refresh(frozenset((self.job_id,)))
        await asyncio.shield(self._read)
        return self.view

    def close(self) -> None:
        """Stop following (idempotent)."""
        self.feed._unsubscribe(self)


class JobFeed:
    """Watchers by job, the latest views, and the task that keeps them fresh.

    ``load`` reads views from the database (called in a worker thread, one call per
    batch of changed jobs: a crowd opening streams at once shares a few reads).
    ``load_visible`` reads only what :func:`visible_state` compares, for every followed
    job at once: when the source may have missed changes, and every ``resync_s`` (a
    backstop for a change announced on a connection that failed after its commit; 0:
    never), only the jobs that differ are read whole. ``source`` says what changed.
    """

    def __init__(self, *, load: ViewLoader, load_visible: VisibleLoader, source: ChangeSource,
                 resync_s: float, logins: LoginCache | None = None,
                 kept: KeptViews | None = None) -> None:
        self.logins = logins if logins is not None else LoginCache(max_age_s=0)
        self.kept = kept if kept is not None else KeptViews(max_active=0)
        self.load = load
        self.load_visible = load_visible
        self.source = source
        self.resync_s = resync_s
        self._watchers: dict[str, set[Watch]] = {}
        self._views: dict[str, JobView | None] = {}
        self._dirty: set[str] = set()
        self._unread: dict[str, list[Watch]] = {}  # new watches waiting for their first read
        # bound to the loop that runs the feed: made in run() (an app may be served by one
        # event loop after another, as tests do)
        self._pending: asyncio.Event | None = None
        self._resync: asyncio.Event | None = None
        self.loads = 0                             # database reads so far (tests, bench)
        self.closing = False
        self._stopped: asyncio.Event | None = None

    # --- what streams use ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pending is not None

    @property
    def watching(self) -> bool:
        return bool(self._watchers)

    @property
    def watchers(self) -> int:
        return sum(len(watches) for watches in self._watchers.values())

    def subscribe(self, job_id: str, *, viewer: int | None = None) -> Watch:
        """Follow ``job_id`` until ``watch.close()``; ``await watch.ready()`` for its view.
        ``viewer``: whose login opened the stream (see :class:`Watch`).

        The watch is registered before its first read, so a change that lands during
        that read is not missed. The first read is fresh even when others already follow
        the job: it is where the stream's access is decided.
        """
        watch = Watch(self, job_id, viewer)
        self._watchers.setdefault(job_id, set()).add(watch)
        self._unread.setdefault(job_id, []).append(watch)
        self._dirty.add(job_id)
        if self._pending is not None:
            self._pending.set()
        return watch

    def _unsubscribe(self, watch: Watch) -> None:
        watches = self._watchers.get(watch.job_id)
        if watches is None or watch not in watches:
            return
        watches.discard(watch)
        if not watches:
            del self._watchers[watch.job_id]
            self._views.pop(watch.job_id, None)

    def close(self) -> None:
        """The server is stopping: wake every stream so it can end."""
        self.closing = True
        for watches in list(self._watchers.values()):
            for watch in list(watches):
                watch.changed.set()

    def stop(self) -> None:
        """End :meth:`run` (and wake every stream: nothing will refresh them now)."""
        self.close()
        if self._stopped is not None:
            self._stopped.set()

    # --- keeping views fresh ------------------------------------------------------------

    def changed(self, job_ids: Iterable[str] | None) -> None:
        """These jobs changed (``None``: maybe any of them did)."""
        if job_ids is RESYNC:
            if self._resync is not None:
                self._resync.set()
            return
        followed = [job_id for job_id in job_ids if job_id in self._watchers]
        if followed:
            self._dirty.update(followed)
            if self._pending is not None:
                self._pending.set()

    async def _refresh(self, job_ids: frozenset[str]) -> None:
        waiting = {job_id: self._unread.pop(job_id) for job_id in job_ids
                   if job_id in self._unread}
        self.loads += 1
        try:
            views = await asyncio.to_thread(self.load, job_ids)
        except BaseException:
            for job_id, unread in waiting.items():  # read again in the next batch
                self._unread.setdefault(job_id, []).extend(unread)
            raise
        for job_id, view in views.items():
            watches = self._watchers.get(job_id)
            if watches:
                old = self._views.get(job_id, ...)
                self._views[job_id] = view
                if old is ... or old is None or view is None or old.visible != view.visible \
                        or old.owner_active != view.owner_active:
                    for watch in list(watches):
                        watch.changed.set()
            for watch in waiting.get(job_id, ()):
                if not watch._read.done():
                    watch._read.set_result(None)

    def _heard(self, batch: ChangeBatch) -> None:
        if isinstance(batch, str):  # LOST
            self.logins.feed_lost()
            self.kept.forget_active()
            return
        if batch is RESYNC:
            self.logins.feed_connected()
            self.changed(RESYNC)
            return
        users = {key for key in batch if key.startswith(USER_PREFIX)}
        if users:
            parsed = {parse_decimal(key[len(USER_PREFIX):]) for key in users}
            user_ids = {user_id for user_id in parsed if user_id is not None}
            self.logins.forget_users(user_ids)
            self._logins_changed(user_ids)
            batch = batch - users
        if batch:
            self.kept.forget(batch)
        self.changed(batch)

    def _logins_changed(self, user_ids: set[int]) -> None:
        """Streams opened by these users' logins check them again; jobs these users own
        are read again (a disabled owner's links open nothing, so their streams end)."""
        owned = []
        for job_id, watches in self._watchers.items():
            view = self._views.get(job_id)
            if view is not None and view.owner_id in user_ids:
                owned.append(job_id)
            for watch in watches:
                if watch.viewer in user_ids:
                    watch.login_changed = True
                    watch.changed.set()
        self.changed(owned)

    async def _listen(self) -> None:
        async for batch in self.source():
            self._heard(batch)

    async def _refresher(self, pending: asyncio.Event) -> None:
        while True:
            await pending.wait()
            pending.clear()
            batch, self._dirty = frozenset(self._dirty), set()
            if not batch:
                continue
            try:
                await self._refresh(batch)
            except Exception as exc:  # the database is away: keep them dirty, try again
                log.warning("job feed: reading %d jobs failed (%s: %s)", len(batch),
                            type(exc).__name__, exc)
                self._dirty.update(batch)
                await asyncio.sleep(1.0)
                pending.set()

    async def _resyncer(self, resync: asyncio.Event) -> None:
        """Compare what is shown with the rows' columns; re-read only what differs."""
        while True:
            await resync.wait()
            resync.clear()
            followed = frozenset(self._watchers)
            if not followed:
                continue
            try:
                rows = await asyncio.to_thread(self.load_visible, followed)
            except Exception as exc:
                log.warning("job feed: resync failed (%s: %s); retrying", type(exc).__name__,
                            exc)
                await asyncio.sleep(1.0)
                resync.set()
                continue
            stale = []
            for job_id in followed:
                view = self._views.get(job_id)
                if view is None or rows.get(job_id) != view.visible:
                    stale.append(job_id)
            self.changed(stale)

    async def _resync_every(self, resync: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            resync.set()

    async def run(self) -> None:
        """Until :meth:`stop` (or cancelled); a source that gives up ends it with its error."""
        pending, resync, stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._pending, self._resync, self._stopped = pending, resync, stopped
        self.closing = False
        if self._dirty:
            pending.set()  # subscribed before the feed ran
        tasks = [asyncio.create_task(self._listen(), name="job-feed-listen"),
                 asyncio.create_task(self._refresher(pending), name="job-feed-refresh"),
                 asyncio.create_task(self._resyncer(resync), name="job-feed-resync")]
        if self.resync_s > 0:
            tasks.append(asyncio.create_task(self._resync_every(resync),
                                             name="job-feed-backstop"))
        stopping = asyncio.create_task(stopped.wait(), name="job-feed-stop")
        try:
            waiting: set[asyncio.Task[Any]] = {*tasks, stopping}
            while stopping in waiting and len(waiting) > 1:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopping}:
                    task.result()  # a source that gave up: say so
        finally:
            self.logins.feed_lost()  # nobody hears changes now
            self.kept.forget_active()
            self._pending = self._resync = self._stopped = None
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
