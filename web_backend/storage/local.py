"""Blobs as files in a directory: the default store, for one machine (``make run``).

``root/ab/cd/<sha256><suffix>``, written atomically (a temporary file, fsynced, then
renamed): a reader sees the whole blob or none, and a crash leaves at most a
temporary file, which ``scan`` skips and ``clipgan storage gc`` removes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ml_backend.files import atomic_write  # stdlib only: keeps torch out of the web side
from web_backend.storage.blobs import BlobMissing, StoredBlob, StoreUnavailable, check_key

__all__ = ["LocalBlobStore"]

T = TypeVar("T")


class LocalBlobStore:
    """Files under ``root``; each call runs off the event loop, within ``timeout_s``
    (a data directory on a network mount that hangs answers ``StoreUnavailable``)."""

    def __init__(self, root: Path, *, timeout_s: float = 10.0) -> None:
        self.root = Path(root)
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"file://{self.root.resolve()}"

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(call), self.timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"{self.describe()} did not answer within "
                                   f"{self.timeout_s:g} s") from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise StoreUnavailable(f"{self.describe()}: {exc.strerror or exc}") from None

    async def put(self, key: str, data: bytes) -> None:
        path = self.path(key)

        def write() -> None:
            if not path.exists():
                atomic_write(path, data)

        await self._run(write)

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await self._run(path.read_bytes)
        except FileNotFoundError:
            raise BlobMissing(key) from None

    async def exists(self, key: str) -> bool:
        try:
            path = self.path(key)
        except BlobMissing:
            return False
        return await self._run(path.exists)

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self.path(key) for key in keys]

        def unlink() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        await self._run(unlink)

    async def scan(self) -> AsyncIterator[StoredBlob]:
        files = await asyncio.to_thread(lambda: list(self._walk()))
        for blob in files:
            yield blob

    def _walk(self) -> Iterator[StoredBlob]:
        if not self.root.is_dir():
            return
        for top in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not top.is_dir():
                continue
            for middle in sorted(os.scandir(top.path), key=lambda e: e.name):
                if not middle.is_dir():
                    continue
                for entry in os.scandir(middle.path):
                    if entry.name.startswith(".") or not entry.is_file():
                        continue  # a write in progress, or one a crash left
                    try:
                        check_key(entry.name)
                    except BlobMissing:
                        continue
                    stat = entry.stat()
                    yield StoredBlob(entry.name, stat.st_size,
                                     datetime.fromtimestamp(stat.st_mtime, UTC))
