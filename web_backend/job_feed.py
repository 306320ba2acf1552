"""One change feed per web process: job changes read once, fanned out to every stream.

An open ``/events`` stream costs nothing while its job is idle: it waits on an
:class:`asyncio.Event`. The feed hears which jobs changed (a source from
:mod:`web_backend.feed_sources`), reads the ones somebody here follows, in one query
per batch, and wakes only their watchers. So the database sees work proportional to
changes, not to watchers, and a job followed by 50 tabs is read once per change.

The feed keeps the latest view of each followed job and nothing else; it forgets a
job when its last watcher leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from web_backend.feed_sources import RESYNC, ChangeSource
from web_backend.schemas import JobOut

__all__ = ["JobFeed", "JobView", "Watch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobView:
    """A job as its watchers see it, built once per change for all of them."""

    out: JobOut                   # links inside expire at the usual TTL; streams re-sign
    preview_key: str | None

    @property
    def visible(self) -> tuple[Any, ...]:
        """What a change must touch to be worth waking watchers (not ETA, not links)."""
        out = self.out
        return (out.status, out.progress.step, out.progress.total, out.progress.score,
                self.preview_key, out.image_url is not None, out.error, out.queue_position)


ViewLoader = Callable[[frozenset[str]], dict[str, JobView | None]]  # None: no such job


class Watch:
    """One stream's subscription: ``changed`` is set when its job's view changed (or the
    server is stopping); ``view`` is the latest."""

    def __init__(self, feed: JobFeed, job_id: str) -> None:
        self.feed = feed
        self.job_id = job_id
        self.changed = asyncio.Event()

    @property
    def view(self) -> JobView | None:
        return self.feed._views.get(self.job_id)


class JobFeed:
    """Watchers by job, the latest views, and the task that keeps them fresh.

    ``load`` reads views from the database (called in a worker thread, one call per
    batch of changed jobs). ``source`` says which jobs changed. ``resync_s``: every so
    often re-read everything followed anyway, a backstop for a change announced on a
    connection that failed after the commit (0: never; a poller needs none).
    """

    def __init__(self, *, load: ViewLoader, source: ChangeSource, resync_s: float) -> None:
        self.load = load
        self.source = source
        self.resync_s = resync_s
        self._watchers: dict[str, set[Watch]] = {}
        self._views: dict[str, JobView | None] = {}
        self._dirty: set[str] = set()
        self._pending = asyncio.Event()
        self._generation = 0                 # bumped per load: an old read never wins
        self._loaded_at: dict[str, int] = {}
        self.loads = 0                       # database reads so far (tests, bench)
        self.closing = False

    # --- what streams use ---------------------------------------------------------------

    @property
    def watching(self) -> bool:
        return bool(self._watchers)

    @property
    def watchers(self) -> int:
        return sum(len(watches) for watches in self._watchers.values())

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """Follow ``job_id`` while inside; ``watch.view`` is set on entry.

        The watcher is registered before its first read, so a change that lands during
        that read is not missed: it wakes the watch, which reads again.
        """
        watch = Watch(self, job_id)
        self._watchers.setdefault(job_id, set()).add(watch)
        try:
            if job_id not in self._views:
                await self._refresh(frozenset((job_id,)))
            yield watch
        finally:
            watches = self._watchers.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watchers[job_id]
                    self._views.pop(job_id, None)
                    self._loaded_at.pop(job_id, None)

    def close(self) -> None:
        """The server is stopping: wake every stream so it can end. Any thread."""
        self.closing = True
        for watches in list(self._watchers.values()):
            for watch in list(watches):
                watch.changed.set()

    # --- keeping views fresh ------------------------------------------------------------

    def changed(self, job_ids: Iterable[str] | None) -> None:
        """These jobs changed (``None``: maybe any of them did)."""
        followed = self._watchers.keys() if job_ids is RESYNC else \
            [job_id for job_id in job_ids if job_id in self._watchers]
        if followed:
            self._dirty.update(followed)
            self._pending.set()

    async def _refresh(self, job_ids: frozenset[str]) -> None:
        self._generation += 1
        generation = self._generation
        self.loads += 1
        views = await asyncio.to_thread(self.load, job_ids)
        for job_id, view in views.items():
            if job_id not in self._watchers or self._loaded_at.get(job_id, 0) > generation:
                continue  # nobody follows it any more, or a later read already landed
            self._loaded_at[job_id] = generation
            old = self._views.get(job_id, ...)
            self._views[job_id] = view
            if old is ... or old is None or view is None or old.visible != view.visible:
                for watch in self._watchers[job_id]:
                    watch.changed.set()

    async def _listen(self) -> None:
        async for batch in self.source():
            self.changed(batch)

    async def _refresher(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            batch, self._dirty = frozenset(self._dirty), set()
            try:
                await self._refresh(batch)
            except Exception as exc:  # the database is away: keep them dirty, try again
                log.warning("job feed: reading %d jobs failed (%s: %s)", len(batch),
                            type(exc).__name__, exc)
                self._dirty.update(batch)
                await asyncio.sleep(1.0)
                self._pending.set()

    async def _resync_every(self) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            self.changed(RESYNC)

    async def run(self) -> None:
        """Until cancelled (the app's lifespan owns this task)."""
        tasks = [asyncio.create_task(self._listen(), name="job-feed-listen"),
                 asyncio.create_task(self._refresher(), name="job-feed-refresh")]
        if self.resync_s > 0:
            tasks.append(asyncio.create_task(self._resync_every(), name="job-feed-resync"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a source that gave up: say so
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
