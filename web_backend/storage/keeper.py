"""The store and its references together: storing, reading and deleting blobs by the
rules of :mod:`web_backend.storage.refs`. What the dispatcher, submissions and deletions
call; they never touch the store's objects and the reference rows separately."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from functools import partial

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from web_backend.storage import refs
from web_backend.storage.blobs import BlobStore, StoreUnavailable, blob_key

__all__ = ["BlobKeeper"]

log = logging.getLogger(__name__)
BATCH = 500  # blobs per deleting transaction


class BlobKeeper:
    """``store`` for the bytes, ``sessions`` (writing) for the references."""

    def __init__(self, *, store: BlobStore, sessions: sessionmaker[Session]) -> None:
        self.store = store
        self.sessions = sessions

    async def save(self, owner: str, data: bytes, *, suffix: str = ".png") -> str:
        """Pin, then store: returns the key, which ``owner`` may now name in its row.
        Raises :class:`StoreUnavailable` (the pin stays: the owner's next write, or its
        deletion, lets it go)."""
        key = blob_key(data, suffix)
        for attempt in range(3):
            try:
                await asyncio.to_thread(self._pin, owner, key, len(data))
                break
            except IntegrityError:  # a deleter took the row between our two inserts
                if attempt == 2:
                    raise
        await self.store.put(key, data)
        return key

    def _pin(self, owner: str, key: str, size: int) -> None:
        with self.sessions() as session:
            refs.pin(session, owner, {key: size})
            session.commit()

    async def get(self, key: str) -> bytes:
        return await self.store.get(key)

    async def collect(self, keys: Iterable[str]) -> int:
        """Delete those of ``keys`` nothing refers to, rows and objects; returns how many.
        A store that fails keeps their rows (``clipgan storage gc`` finds them later):
        logged, not raised, because what asked for it (a deletion) is already done."""
        wanted = sorted(set(keys))
        deleted = 0
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start:start + BATCH]
            try:
                deleted += await self._in_transaction(partial(refs.doomed, keys=batch))
            except StoreUnavailable as exc:
                log.warning("blobs kept for later (clipgan storage gc): %s", exc)
                return deleted
        return deleted

    async def forget(self, owner: str) -> None:
        """``owner`` refers to nothing any more (an upload whose submission failed);
        its blobs go unless another owner refers to them. Best effort: never raises."""
        await self._let_go(owner, lambda session: refs.release(session, [owner]))

    async def forget_if_gone(self, owner: str) -> None:
        """Job ``owner`` was deleted while something of it was being stored: let its
        references go (nothing if the job still exists). Best effort: never raises."""
        await self._let_go(owner, lambda session: refs.release_if_gone(session, owner))

    async def _let_go(self, owner: str, release: Callable[[Session], list[str]]) -> None:
        try:
            await self._in_transaction(lambda session: refs.doomed(session, release(session)))
        except Exception as exc:  # the pin stays: the retention sweeper or gc finds it later
            log.warning("references of %s kept for later (%s: %s)", owner,
                        type(exc).__name__, exc)

    async def _in_transaction(self, pick: Callable[[Session], list[str]]) -> int:
        """``pick`` locks and deletes rows; their objects go before the commit."""
        session = self.sessions()
        try:
            keys = await asyncio.to_thread(pick, session)
            if keys:
                await self.store.delete(keys)
            await asyncio.to_thread(session.commit)
            return len(keys)
        except BaseException:
            await asyncio.to_thread(session.rollback)
            raise
        finally:
            await asyncio.to_thread(session.close)
