"""One contract for every blob store: the local directory and an S3 bucket (moto's
S3 server over HTTP) pass the same tests, and both fail the same way."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import S3Server
from web_backend.storage.blobs import BlobMissing, BlobStore, StoreUnavailable, blob_key
from web_backend.storage.local import LocalBlobStore
from web_backend.storage.s3 import S3BlobStore
from web_backend.storage.stores import open_store

PNG = b"\x89PNG\r\n\x1a\n" + b"picture" * 100
HOSTILE_KEYS = ["../../etc/passwd", "ab/cd/" + "a" * 64 + ".png", "A" * 64 + ".png",
                "a" * 63 + ".png", "a" * 64 + ".png/..", "", "a" * 64 + ".PNG", "%2e%2e"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs", timeout_s=5)
    server: S3Server = request.getfixturevalue("s3_server")
    return S3BlobStore(f"s3://{server.new_bucket()}/results", timeout_s=5, **server.config())


async def _listed(store: BlobStore) -> dict[str, int]:
    return {blob.key: blob.size async for blob in store.scan()}


def test_a_blob_reads_back_whole_under_its_content_key(store: BlobStore) -> None:
    async def run() -> None:
        key = blob_key(PNG)
        assert not await store.exists(key)
        await store.put(key, PNG)
        await store.put(key, PNG)  # a retried write is harmless
        assert await store.get(key) == PNG
        assert await store.exists(key)
        assert await _listed(store) == {key: len(PNG)}

    asyncio.run(run())


def test_a_missing_blob_is_missing_not_an_error(store: BlobStore) -> None:
    async def run() -> None:
        key = blob_key(b"never written")
        with pytest.raises(BlobMissing):
            await store.get(key)
        await store.delete([key])  # deleting what is gone is not an error
        assert await _listed(store) == {}

    asyncio.run(run())


def test_deleting_takes_exactly_the_keys_named(store: BlobStore) -> None:
    async def run() -> None:
        blobs = {blob_key(bytes([i]) * 50): bytes([i]) * 50 for i in range(5)}
        for key, data in blobs.items():
            await store.put(key, data)
        doomed, kept = sorted(blobs)[:3], sorted(blobs)[3:]
        await store.delete(doomed)
        for key in doomed:
            with pytest.raises(BlobMissing):
                await store.get(key)
        assert {key: await store.get(key) for key in kept} == {k: blobs[k] for k in kept}
        assert await _listed(store) == {key: 50 for key in kept}

    asyncio.run(run())


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_only_content_keys_reach_the_store(store: BlobStore, key: str) -> None:
    async def run() -> None:
        with pytest.raises(BlobMissing):
            await store.put(key, b"x")
        with pytest.raises(BlobMissing):
            await store.get(key)
        assert not await store.exists(key)
        with pytest.raises(BlobMissing):
            await store.delete([key])
        assert await _listed(store) == {}

    asyncio.run(run())


def test_a_listing_skips_what_is_not_a_blob(tmp_path: Path, s3_server: S3Server) -> None:
    """Temporary files of a write in progress, other files in the directory or under
    the bucket's prefix: never listed, so ``gc`` never deletes them."""
    async def run() -> None:
        local = LocalBlobStore(tmp_path / "blobs")
        key = blob_key(PNG)
        await local.put(key, PNG)
        (local.path(key).parent / f".{key}.x.tmp").write_bytes(b"half")
        (tmp_path / "blobs" / "README").write_text("not a blob")
        assert await _listed(local) == {key: len(PNG)}

        import obstore

        bucket = s3_server.new_bucket()
        s3 = S3BlobStore(f"s3://{bucket}/results", **s3_server.config())
        await s3.put(key, PNG)
        raw = S3BlobStore(f"s3://{bucket}", **s3_server.config())
        await obstore.put_async(raw._store, "results/notes.txt", b"not a blob")
        await obstore.put_async(raw._store, "elsewhere/" + key, PNG)
        assert await _listed(s3) == {key: len(PNG)}

    asyncio.run(run())


def test_more_than_one_request_of_deletions(s3_server: S3Server) -> None:
    """S3 deletes at most 1,000 keys per request: 1,005 go in two."""
    async def run() -> None:
        store = S3BlobStore(f"s3://{s3_server.new_bucket()}", **s3_server.config())
        keys = [blob_key(i.to_bytes(4, "big")) for i in range(1005)]
        await asyncio.gather(*(store.put(key, b"x") for key in keys[:20]))
        await store.delete(keys)
        assert await _listed(store) == {}

    asyncio.run(run())


def test_storage_url_chooses_the_store(tmp_path: Path, s3_server: S3Server,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(None, default_root=tmp_path, timeout_s=1), LocalBlobStore)
    local = open_store(f"file://{tmp_path}/elsewhere", default_root=tmp_path, timeout_s=1)
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "elsewhere"
    for env, value in s3_server.env().items():  # the standard AWS chain, as in production
        monkeypatch.setenv(env, value)
    bucket = s3_server.new_bucket()
    s3 = open_store(f"s3://{bucket}/p", default_root=tmp_path, timeout_s=1)
    assert isinstance(s3, S3BlobStore) and s3.describe() == f"s3://{bucket}/p"
    asyncio.run(s3.put(blob_key(PNG), PNG))
    assert asyncio.run(s3.get(blob_key(PNG))) == PNG
    for bad in ("ftp://x/y", "file://otherhost/x", "s3://", "blobs"):
        with pytest.raises(ValueError):
            open_store(bad, default_root=tmp_path, timeout_s=1)


# --- how stores fail: within their deadline, as StoreUnavailable -------------------------

@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections and never answers (a hung store)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def _unavailable_within(call, limit_s: float) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        asyncio.run(call())
    elapsed = time.monotonic() - started
    assert elapsed < limit_s, f"took {elapsed:.1f} s"
    return elapsed


def test_a_hung_s3_endpoint_answers_unavailable_within_the_deadline(silent_port: int) -> None:
    store = S3BlobStore("s3://bucket", timeout_s=1.5, endpoint=f"http://127.0.0.1:{silent_port}",
                        region="us-east-1", access_key_id="x", secret_access_key="x")
    key = blob_key(PNG)
    for call in (lambda: store.get(key), lambda: store.put(key, PNG),
                 lambda: store.delete([key]), lambda: store.exists(key)):
        _unavailable_within(call, 4.0)


def test_a_refused_s3_endpoint_answers_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once closed
    store = S3BlobStore("s3://bucket", timeout_s=2, endpoint=f"http://127.0.0.1:{port}",
                        region="us-east-1", access_key_id="x", secret_access_key="x")
    _unavailable_within(lambda: store.get(blob_key(PNG)), 4.0)


def test_a_hung_directory_answers_unavailable_within_the_deadline(tmp_path: Path) -> None:
    """A read that blocks (here a FIFO, as a stuck network mount would) gives up at the
    deadline: the request slot is free again, the thread finishes when the file system
    answers."""
    store = LocalBlobStore(tmp_path, timeout_s=1)
    key = blob_key(PNG)
    path = store.path(key)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)

    async def run() -> float:
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await store.get(key)
            return time.monotonic() - started
        finally:  # the file system answers: the reader left in its thread finishes
            with open(path, "wb"):
                pass

    assert asyncio.run(run()) < 3.0


def test_a_broken_directory_answers_unavailable(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("a file where the directory should be")
    store = LocalBlobStore(tmp_path / "blobs", timeout_s=2)
    key = blob_key(PNG)
    _unavailable_within(lambda: store.put(key, PNG), 3.0)
    _unavailable_within(lambda: store.get(key), 3.0)
