"""The blob store interface: what every store does, and how it fails.

Keys are the SHA-256 of the content plus a suffix (``blob_key``): a retried write
is a no-op, two jobs with the same picture share one blob, and the ETag is free.
Every call is async and bounded by the store's deadline: a store that is down or
slow answers :class:`StoreUnavailable` within it, which the API turns into a 503
with ``Retry-After`` and the dispatcher into a retry, never into a lost job.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["BlobMissing", "BlobStore", "StoreUnavailable", "StoredBlob", "blob_key",
           "check_key"]

_KEY = re.compile(r"[0-9a-f]{64}(\.[a-z0-9]{1,8})?")


class BlobMissing(KeyError):
    """No blob under this key (never written, or deleted)."""


class StoreUnavailable(Exception):
    """The store did not answer in time, or refused us: try again later."""

    retry_after_s = 5


@dataclass(frozen=True)
class StoredBlob:
    """A blob as a listing shows it (``gc`` only: never on a request path)."""

    key: str
    size: int
    modified: datetime


def blob_key(data: bytes, suffix: str = ".png") -> str:
    return hashlib.sha256(data).hexdigest() + suffix


def check_key(key: str) -> str:
    """A key as ``blob_key`` makes them, or :class:`BlobMissing`: nothing else (no
    path separators, no ``..``) ever reaches a file system or a bucket."""
    if not _KEY.fullmatch(key):
        raise BlobMissing(key)
    return key


class BlobStore(Protocol):
    """Content-addressed blobs. Implementations: ``local.LocalBlobStore`` (a directory)
    and ``s3.S3BlobStore`` (any S3-compatible bucket)."""

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (``blob_key(data)``); rewriting it is harmless."""
        ...

    async def get(self, key: str) -> bytes:
        """The blob's bytes, or :class:`BlobMissing`."""
        ...

    async def exists(self, key: str) -> bool:
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these blobs; a key that is already gone is not an error."""
        ...

    def scan(self) -> AsyncIterator[StoredBlob]:
        """Every blob in the store, in no particular order (``clipgan storage gc``)."""
        ...

    def describe(self) -> str:
        """Where the blobs are, for logs (never a credential)."""
        ...
