"""The retention sweeper: finished jobs and their pictures go ``CLIPGAN_RESULT_RETENTION_DAYS``
after they end, and pins a crash left (an upload never queued, a deleted job's
preview stored by a dispatcher that died before it heard) go after an hour.

Every web process runs one; a lease (``core.leases``) lets one at a time work, and
another take over when it dies. Work is done in batches (one transaction and one
bulk delete of blobs each), so a year of backlog never becomes one huge transaction,
and the lease is renewed between batches. Two sweepers that did overlap (a lease
that expired under a slow batch) would be harmless: deleting is idempotent, and a
blob goes only when nothing refers to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from web_backend.core import leases
from web_backend.core.models import utcnow
from web_backend.jobs import removal
from web_backend.storage import refs
from web_backend.storage.keeper import BlobKeeper

__all__ = ["RetentionSweeper", "Swept"]

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
LEASE = "retention"
UPLOADS_KEPT = timedelta(hours=1)


@dataclass
class Swept:
    jobs: int = 0           # finished jobs deleted
    uploads: int = 0        # stale pins let go (uploads, deleted jobs')
    blobs: int = 0          # blobs deleted (rows and objects)


class RetentionSweeper:
    """``days`` None: no expiry (only stale uploads are swept)."""

    def __init__(self, *,
                 sessions: sessionmaker[Session],  # writing sessions
                 blobs:    BlobKeeper,             # where the pictures go from
                 days:     int | None,             # CLIPGAN_RESULT_RETENTION_DAYS
                 every_s:  float = 300.0,          # between passes
                 batch:    int = 500,              # jobs per transaction
                 lease_s:  float = 120.0,          # renewed before each batch
                 owner:    str | None = None,      # lease owner name
                 ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.days = days
        self.every_s = every_s
        self.batch = batch
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self._stop = asyncio.Event()
        try:
            while not self._stop.is_set():
                # first pass one interval after start: a starting process (or a test app)
                # has nothing due that cannot wait, and no write of ours competes with it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every_s)
                if self._stop.is_set():
                    break
                try:
                    swept = await self.sweep()
                    if swept.jobs or swept.uploads:
                        log.info("retention: %d jobs, %d stale uploads and %d blobs deleted",
                                 swept.jobs, swept.uploads, swept.blobs)
                except Exception as exc:  # the database or the store is away: next pass
                    log.warning("retention sweep failed (%s: %s)", type(exc).__name__, exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._session_call, leases.release, LEASE, self.owner)

    def stop(self) -> None:
        self._stop.set()

    def _session_call(self, call: Callable[Concatenate[Session, P], T], *args: P.args,
                      **kwargs: P.kwargs) -> T:
        with self.sessions() as session:
            return call(session, *args, **kwargs)

    async def _hold(self) -> bool:
        return await asyncio.to_thread(self._session_call, leases.hold, LEASE, self.owner,
                                       ttl_s=self.lease_s)

    async def sweep(self) -> Swept:
        """One pass, while this process holds the lease: batches until nothing is due."""
        swept = Swept()
        while not self._stop.is_set() and await self._hold():
            jobs, uploads, blobs = await self._one_batch()
            swept.jobs += jobs
            swept.uploads += uploads
            swept.blobs += blobs
            if jobs < self.batch and uploads < self.batch:
                break
        return swept

    async def _one_batch(self) -> tuple[int, int, int]:
        now = utcnow()

        def delete_due() -> tuple[int, int, list[str]]:
            with self.sessions() as session:
                released: list[str] = []
                deleted: list[str] = []
                if self.days is not None:
                    due = removal.expired(session, ended_before=now - timedelta(days=self.days),
                                          limit=self.batch)
                    deleted, released = removal.delete_finished(session, due)
                uploads = refs.stale_uploads(session, before=now - UPLOADS_KEPT,
                                             limit=self.batch)
                uploads += refs.ownerless(session, before=now - UPLOADS_KEPT, limit=self.batch)
                released += refs.release(session, uploads)
                session.commit()
                return len(deleted), len(uploads), released

        jobs, uploads, released = await asyncio.to_thread(delete_due)
        blobs = await self.blobs.collect(released)
        return jobs, uploads, blobs
