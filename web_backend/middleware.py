"""Admission control: at most N requests in progress per worker process.

Sync routes and dependencies run on a 40-thread pool, and a request between two of
its thread hops still holds its database session. Let 200 requests in at once and
they hold every pooled connection while waiting for threads that are themselves
waiting for connections. Admitting fewer requests than there are threads keeps the
rest waiting in the event loop, holding nothing, served in arrival order.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ConcurrencyLimit"]


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, *, limit: int, exempt_suffixes: tuple[str, ...] = ()
                 ) -> None:
        self.app = app
        self.limit = limit
        self.exempt_suffixes = exempt_suffixes
        self._semaphore: asyncio.Semaphore | None = None  # made on the serving loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(self.exempt_suffixes):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            await self.app(scope, receive, send)
