"""Which store ``CLIPGAN_STORAGE_URL`` names: ``file://`` (default) or ``s3://``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from web_backend.storage.blobs import BlobStore
from web_backend.storage.local import LocalBlobStore

__all__ = ["open_store"]


def open_store(url: str | None, *, default_root: Path, timeout_s: float) -> BlobStore:
    """``url`` None: files under ``default_root`` (the data directory's ``blobs``)."""
    if url is None:
        return LocalBlobStore(default_root, timeout_s=timeout_s)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// storage URL names a local directory: {url!r}")
        return LocalBlobStore(Path(unquote(parts.path)), timeout_s=timeout_s)
    if parts.scheme == "s3":
        from web_backend.storage.s3 import S3BlobStore  # obstore only when asked for

        return S3BlobStore(url, timeout_s=timeout_s)
    raise ValueError(f"CLIPGAN_STORAGE_URL is file:///path or s3://bucket/prefix, not {url!r}")
