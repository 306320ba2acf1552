"""Job views kept per process, so that a status read needs no database.

A page polls its job while it runs, and keeps reading it after it ends (a gallery, a
shared tab, fifty tabs on one job). Two kinds of view are kept:

* **finished**: a job that succeeded, failed or was cancelled, whose webhook (if any)
  has settled (deliveries still move after the job ends), never changes again but
  can be deleted. Kept until evicted (least recently read first), deleted (heard
  like a change) or the feed is lost (a deletion may go unheard).
* **active**: a queued or running job without a webhook, kept for at most
  ``active_max_age_s`` and dropped as soon as this process hears that the job changed:
  its own commits at once (:func:`web_backend.core.changes.announce_commits`),
  other processes' through the job feed, and every active view when the feed is lost.
  So the status, progress, preview and timings a read shows are as fresh as the feed;
  only the queue position and ETA, which move with *other* jobs, may be up to
  ``active_max_age_s`` old.

A read that began before a change was heard must not keep its answer: ``put`` takes
the generation read when the query began and refuses an active view of a job
forgotten since. The login that reads a view is checked by
:mod:`web_backend.live.login_cache`. Signed links are made fresh on each read, so views
are kept as JSON without them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from web_backend.core.models import DeliveryStatus, JobStatus
from web_backend.jobs.schemas import JobOut

__all__ = ["KeptView", "KeptViews", "is_final"]

_FINAL: Final = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
_LINKS: Final = frozenset(("image_url", "preview_url", "events_url"))


def is_final(out: JobOut) -> bool:
    """Nothing about this job will change: it ended and its webhook has settled."""
    if out.status not in _FINAL:
        return False
    return out.webhook is None or all(delivery.status != DeliveryStatus.pending
                                      for delivery in out.webhook.deliveries)


def _may_keep_active(out: JobOut) -> bool:
    """Every change to an active job without a webhook moves its row, which is what
    the feed announces (webhook deliveries live in a table of their own)."""
    return out.status.active and out.webhook is None


@dataclass(frozen=True)
class KeptView:
    job_id: str
    owner_id: int
    head: bytes        # the view as a JSON object without its links and closing brace
    has_image: bool
    has_preview: bool

    @classmethod
    def of(cls, owner_id: int, out: JobOut) -> KeptView:
        head = out.model_dump_json(exclude=set(_LINKS)).encode()
        return cls(out.id, owner_id, head[:-1], out.image_url is not None,
                   out.preview_url is not None)

    def body(self, links: bytes) -> bytes:
        """The whole JSON object, given the links as a JSON object of their own."""
        return self.head + b"," + links[1:]


class KeptViews:
    """Job id -> :class:`KeptView`, finished and active. Thread-safe: reads fill it from
    worker threads, commits and the feed empty it from wherever they run."""

    def __init__(self, *, max_finished: int = 10_000, max_active: int = 10_000,
                 active_max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_finished = max_finished
        self.max_active = max_active
        self.active_max_age_s = active_max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._finished: OrderedDict[str, KeptView] = OrderedDict()
        self._active: OrderedDict[str, tuple[KeptView, float]] = OrderedDict()  # kept at
        self._generation = 0
        self._forgotten: dict[str, int] = {}  # job id -> generation when last forgotten
        self._floor = 0                       # reads begun before this may be stale for any job

    def __len__(self) -> int:
        return len(self._finished) + len(self._active)

    @property
    def active(self) -> int:
        """Active views kept now (expired ones included until read or forgotten)."""
        return len(self._active)

    def generation(self) -> int:
        """Take this before the query whose answer goes to :meth:`put`."""
        return self._generation

    def get(self, job_id: str) -> KeptView | None:
        with self._lock:
            found = self._finished.get(job_id)
            if found is not None:
                self._finished.move_to_end(job_id)
                return found
            active = self._active.get(job_id)
            if active is None:
                return None
            if self._clock() - active[1] > self.active_max_age_s:
                del self._active[job_id]
                return None
            return active[0]

    def put(self, owner_id: int, out: JobOut, *, read_at: int) -> KeptView | None:
        """Keep ``out``, read by a query begun at generation ``read_at``, if it is final,
        or active and not changed since that query began; returns what was kept."""
        if is_final(out):
            if self.max_finished <= 0:
                return None
            kept = KeptView.of(owner_id, out)
            with self._lock:
                if read_at < self._floor or self._forgotten.get(out.id, -1) > read_at:
                    return None  # deleted while it was being read, perhaps
                self._active.pop(out.id, None)
                self._finished[out.id] = kept
                self._finished.move_to_end(out.id)
                while len(self._finished) > self.max_finished:
                    self._finished.popitem(last=False)
            return kept
        if self.max_active <= 0 or self.active_max_age_s <= 0 or not _may_keep_active(out):
            return None
        kept = KeptView.of(owner_id, out)
        with self._lock:
            if read_at < self._floor or self._forgotten.get(out.id, -1) > read_at:
                return None  # it changed while it was being read: the answer may be stale
            self._active.pop(out.id, None)
            self._active[out.id] = (kept, self._clock())
            while len(self._active) > self.max_active:
                self._active.popitem(last=False)
        return kept

    def forget(self, job_ids: Iterable[str]) -> None:
        """These jobs changed, or were deleted: drop their views."""
        with self._lock:
            self._generation += 1
            for job_id in job_ids:
                self._active.pop(job_id, None)
                self._finished.pop(job_id, None)
                self._forgotten[job_id] = self._generation
            if len(self._forgotten) > 4 * max(self.max_active, 1):
                self._refuse_earlier_reads()  # bounded: what it forgot is no longer known

    def forget_active(self) -> None:
        """Changes and deletions may go unheard (the feed is lost): keep no view from
        before, finished ones included (one may have been deleted meanwhile)."""
        with self._lock:
            self._active.clear()
            self._finished.clear()
            self._refuse_earlier_reads()

    def _refuse_earlier_reads(self) -> None:
        """No read begun before now keeps an active view (the lock is held)."""
        self._forgotten.clear()
        self._generation += 1
        self._floor = self._generation
