"""Finding what nothing refers to: ``clipgan storage gc``.

Normal operation deletes a blob with its last reference (``keeper.collect``). What is
left for this command is what a failure left, or what came before references were
kept (migration 0009):

* **objects without a row**: a deletion whose store call failed after its commit, or
  previews replaced before 0009;
* **rows nothing refers to**: a deletion whose store call failed (its rows stay);
* **upload pins** older than the grace period: a submission that died between storing
  its image prompt and queueing its job (the retention sweeper lets these go too).

It lists the whole store (the only place anything does), so it is an operator's
command, not a request path. Objects and pins younger than ``grace`` are left alone
(a writer may be between its pin and its put). Deleting goes through the same rules
as everything else: objects without a row are first *adopted* (given a row), then
collected like any unreferenced blob, under the row locks, so a writer pinning the
same content meanwhile keeps it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from web_backend.core.models import Blob, utcnow
from web_backend.storage import refs
from web_backend.storage.keeper import BlobKeeper

__all__ = ["GcPlan", "apply", "plan"]

PAGE = 1000


@dataclass
class GcPlan:
    """What ``apply`` would delete, and what the store says of rows' unknown sizes."""

    orphan_objects: dict[str, int] = field(default_factory=dict)  # key -> bytes
    unreferenced: dict[str, int | None] = field(default_factory=dict)  # key -> bytes
    stale_uploads: list[str] = field(default_factory=list)           # pin owners
    sizes_found: dict[str, int] = field(default_factory=dict)        # rows' NULL sizes
    objects: int = 0                                                 # the store holds
    stored_bytes: int = 0

    @property
    def reclaimable_bytes(self) -> int:
        return sum(self.orphan_objects.values()) + sum(
            size or self.sizes_found.get(key, 0) for key, size in self.unreferenced.items())


def _rows(session: Session, keys: list[str]) -> dict[str, int | None]:
    return {key: size for key, size in session.execute(
        select(Blob.key, Blob.size).where(Blob.key.in_(keys))).all()}


async def plan(keeper: BlobKeeper, *, grace: timedelta) -> GcPlan:
    """Read the store and the references; change nothing."""
    found = GcPlan()
    cutoff = utcnow() - grace
    sessions = keeper.sessions
    page: list[tuple[str, int, bool]] = []

    def sort_page(batch: list[tuple[str, int, bool]]) -> None:
        with sessions() as session:
            rows = _rows(session, [key for key, _, _ in batch])
        for key, size, old in batch:
            if key not in rows:
                if old:
                    found.orphan_objects[key] = size
            elif rows[key] is None:
                found.sizes_found[key] = size

    async for blob in keeper.store.scan():
        found.objects += 1
        found.stored_bytes += blob.size
        page.append((blob.key, blob.size, blob.modified < cutoff))
        if len(page) >= PAGE:
            await asyncio.to_thread(sort_page, page)
            page = []
    if page:
        await asyncio.to_thread(sort_page, page)

    def from_database() -> None:
        with sessions() as session:
            after = ""
            while keys := refs.unreferenced_rows(session, limit=PAGE, after=after):
                found.unreferenced.update(_rows(session, keys))
                after = keys[-1]
            found.stale_uploads = refs.stale_uploads(session, before=cutoff, limit=10**9)

    await asyncio.to_thread(from_database)
    return found


async def apply(keeper: BlobKeeper, found: GcPlan) -> int:
    """Delete what ``found`` lists (rechecked under the row locks); fill unknown sizes.
    Returns the blobs deleted."""
    sessions = keeper.sessions

    def adopt_and_release() -> list[str]:
        with sessions() as session:
            for key, size in found.sizes_found.items():
                session.execute(update(Blob).where(Blob.key == key, Blob.size.is_(None))
                                .values(size=size))
            orphans = sorted(found.orphan_objects)
            for start in range(0, len(orphans), PAGE):
                refs.adopt(session, {key: found.orphan_objects[key]
                                     for key in orphans[start:start + PAGE]})
            released = refs.release(session, found.stale_uploads)
            session.commit()
            return released

    released = await asyncio.to_thread(adopt_and_release)
    return await keeper.collect([*found.orphan_objects, *found.unreferenced, *released])
