"""Views of finished jobs, kept per process: a finished job never changes again.

A page polls its job until it ends and then keeps reading it (a gallery, a shared
tab): those reads need no database once the view is here. Only what is final is
kept: a job that succeeded, failed or was cancelled, whose webhook (if any) has
settled, since deliveries still move after the job ends. No invalidation is needed
for what cannot change; the login that reads it is checked by
:mod:`web_backend.login_cache`. Signed links are made fresh on each read, so the view
is kept as JSON without them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from web_backend.models import DeliveryStatus, JobStatus
from web_backend.schemas import JobOut

__all__ = ["FinishedJob", "FinishedJobs", "is_final"]

_FINAL: Final = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
_LINKS: Final = frozenset(("image_url", "preview_url", "events_url"))


def is_final(out: JobOut) -> bool:
    """Nothing about this job will change: it ended and its webhook has settled."""
    if out.status not in _FINAL:
        return False
    return out.webhook is None or all(delivery.status != DeliveryStatus.pending
                                      for delivery in out.webhook.deliveries)


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    owner_id: int
    head: bytes        # the view as a JSON object without its links and closing brace
    has_image: bool
    has_preview: bool

    def body(self, links: bytes) -> bytes:
        """The whole JSON object, given the links as a JSON object of their own."""
        return self.head + b"," + links[1:]


class FinishedJobs:
    """Job id -> :class:`FinishedJob`, least recently read dropped first. Thread-safe."""

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, FinishedJob] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> FinishedJob | None:
        with self._lock:
            found = self._jobs.get(job_id)
            if found is not None:
                self._jobs.move_to_end(job_id)
            return found

    def put(self, owner_id: int, out: JobOut) -> FinishedJob | None:
        """Keeps ``out`` if it is final (:func:`is_final`) and returns what was kept;
        anything else is ignored (None)."""
        if self.max_entries <= 0 or not is_final(out):
            return None
        head = out.model_dump_json(exclude=set(_LINKS)).encode()
        finished = FinishedJob(out.id, owner_id, head[:-1], out.image_url is not None,
                               out.preview_url is not None)
        with self._lock:
            self._jobs[out.id] = finished
            self._jobs.move_to_end(out.id)
            while len(self._jobs) > self.max_entries:
                self._jobs.popitem(last=False)
        return finished
