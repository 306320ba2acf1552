"""Admission control: at most N requests in progress per worker process.

Sync routes and dependencies run on a 40-thread pool, and a request between two of
its thread hops still holds its database session. Let 200 requests in at once and
they hold every pooled connection while waiting for threads that are themselves
waiting for connections. Admitting fewer requests than there are threads keeps the
rest waiting in the event loop, holding nothing, served in arrival order.

Bodies are read before a request gets here (``bodies.BodyLimit``), so a slot is held
only by work the server itself is doing; :class:`Admission` says when even that work
has stopped moving, which is what liveness reports.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Admission", "ConcurrencyLimit"]


class Admission:
    """The slots of one process and when one last came free."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0
        self.waiting = 0
        self.last_freed = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds requests have been waiting while no slot came free (0: moving)."""
        if self.in_progress < self.limit or not self.waiting:
            return 0.0
        return time.monotonic() - self.last_freed


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, *, limit: int, exempt_suffixes: tuple[str, ...] = (),
                 admission: Admission | None = None) -> None:
        self.app = app
        self.admission = admission or Admission(limit)
        self.exempt_suffixes = exempt_suffixes
        self._semaphore: asyncio.Semaphore | None = None  # made on the serving loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(self.exempt_suffixes):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.admission.limit)
        state = self.admission
        state.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            state.waiting -= 1
        state.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_progress -= 1
            state.last_freed = time.monotonic()
            self._semaphore.release()
