"""Result and preview storage: content-addressed blobs behind a small interface.

Keys are the SHA-256 of the content, so a retried write is a no-op and an ETag is
free. Local disk by default; an S3-compatible store implements the same three methods.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from ml_backend.files import atomic_write  # stdlib only: keeps torch out of the web side

__all__ = ["BlobStore", "LocalBlobStore"]


class BlobStore(Protocol):
    def put(self, data: bytes, suffix: str = ".png") -> str: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...


class LocalBlobStore:
    """Files under ``root/ab/cd/<sha256><suffix>``, written atomically (temp + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        name, _, _ = key.partition(".")
        if len(name) != 64 or any(c not in "0123456789abcdef" for c in name):
            raise KeyError(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes, suffix: str = ".png") -> str:
        key = hashlib.sha256(data).hexdigest() + suffix
        path = self._path(key)
        if path.exists():
            return key
        atomic_write(path, data)
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).exists()
        except KeyError:
            return False
