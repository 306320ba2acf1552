"""Result and preview storage: content-addressed blobs behind a small interface.

Keys are the SHA-256 of the content, so a retried write is a no-op and an ETag is
free. Local disk by default; an S3-compatible store implements the same three methods.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def put(self, data: bytes, suffix: str = ".png") -> str: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...


class LocalBlobStore:
    """Files under ``root/ab/cd/<sha256><suffix>``, written atomically (temp + rename).

    (ml_backend/files.py does the same for checkpoints; the web side keeps its own copy
    because it may import only ml_backend.protocol.)
    """

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
