"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...): for several web nodes.

Through obstore (Rust's ``object_store`` crate): async calls that need no thread
each, one dependency without transitive ones, timeouts and retries that bound every
request, and the standard AWS configuration from the environment (``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, web identity, ECS and instance-metadata credentials).
boto3 would need a thread per call, and aiobotocore pins botocore and brings aiohttp.

Objects are ``<prefix>/ab/cd/<key>``, like the local store. Every call ends within
``timeout_s`` (the client's own timeouts and retries fit inside it, and an
``asyncio`` deadline covers the rest): a store that is down or slow answers
:class:`StoreUnavailable`, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

from web_backend.storage.blobs import BlobMissing, StoredBlob, StoreUnavailable, check_key

__all__ = ["S3BlobStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


def _endpoint(config: dict[str, Any]) -> str | None:
    explicit = config.get("endpoint")
    if explicit:
        return str(explicit)
    return next((os.environ[name] for name in _ENDPOINT_VARIABLES if os.environ.get(name)),
                None)


class S3BlobStore:
    """``url``: ``s3://bucket`` or ``s3://bucket/prefix``. ``config``: S3 settings that
    override the environment's (obstore's ``S3Config`` names: ``endpoint``, ``region``,
    ``access_key_id``...)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, **config: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
        self.url = f"s3://{parts.netloc}{parts.path.rstrip('/')}"
        self.timeout_s = timeout_s
        endpoint = _endpoint(config)
        # an http:// endpoint is the operator's explicit choice (a bucket on a private
        # network, an emulator in tests); https everywhere else
        allow_http = bool(endpoint and endpoint.startswith("http://"))
        self._store = S3Store.from_url(
            self.url,
            client_options={"timeout": timedelta(seconds=timeout_s),
                            "connect_timeout": timedelta(seconds=min(timeout_s, 3.0)),
                            "allow_http": allow_http},
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=timeout_s),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=1), "base": 2}},
            **config)

    def describe(self) -> str:
        return self.url

    @staticmethod
    def _path(key: str) -> str:
        check_key(key)
        return f"{key[:2]}/{key[2:4]}/{key}"

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except FileNotFoundError:  # obstore's NotFoundError
            raise
        except TimeoutError:
            raise StoreUnavailable(f"{self.url}: {what} took over {self.timeout_s:g} s") \
                from None
        except Exception as exc:  # connection refused, 5xx after retries, credentials
            log.warning("%s: %s failed: %s", self.url, what, str(exc).splitlines()[0][:300])
            raise StoreUnavailable(f"{self.url}: {what} failed ({type(exc).__name__})") \
                from None

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put", obstore.put_async(self._store, self._path(key), data))

    async def get(self, key: str) -> bytes:
        path = self._path(key)

        async def read() -> bytes:
            result = await obstore.get_async(self._store, path)
            return bytes(await result.bytes_async())

        try:
            return await self._call("get", read())
        except FileNotFoundError:
            raise BlobMissing(key) from None

    async def exists(self, key: str) -> bool:
        try:
            path = self._path(key)
        except BlobMissing:
            return False
        try:
            await self._call("head", obstore.head_async(self._store, path))
        except FileNotFoundError:
            return False
        return True

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]
        for start in range(0, len(paths), 1000):  # S3's DeleteObjects takes 1,000 at most
            await self._call("delete", obstore.delete_async(self._store,
                                                            paths[start:start + 1000]))

    async def scan(self) -> AsyncIterator[StoredBlob]:
        stream = obstore.list(self._store, chunk_size=1000)

        async def next_batch() -> Sequence[Any] | None:
            try:
                return await anext(stream)
            except StopAsyncIteration:
                return None

        while (batch := await self._call("list", next_batch())) is not None:
            for meta in batch:
                name = meta["path"].rsplit("/", 1)[-1]
                try:
                    check_key(name)
                except BlobMissing:
                    continue  # not ours: the bucket may hold other things under the prefix
                yield StoredBlob(name, meta["size"], meta["last_modified"])
