"""Two web nodes, as behind a load balancer: separate data directories, one PostgreSQL,
one Redis, one S3 bucket (moto's emulated server), and a real local Ray cluster that
only node B's dispatcher reaches. A job submitted on A is run by B and downloaded from
A; links made by A open on B; a deletion on B is final on A at once."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.infra import fresh_postgres_database, require_redis
from tests.servers import CLUSTER_SECRET, S3Server, free_port, wait_ready
from web_backend.core import migrate
from web_backend.storage.s3 import S3BlobStore

pytestmark = pytest.mark.slow
SECRET_KEY = secrets.token_hex(32)  # every node of a deployment signs alike


class Node:
    """``clipgan web`` in its own data directory, on the shared services."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir()
        self.data_dir = data_dir
        full = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
        full.update(env, CLIPGAN_DATA_DIR=str(data_dir), RAY_USAGE_STATS_ENABLED="0")
        self.log = (data_dir.parent / f"node-{name}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "web", "--port",
                                      str(self.port)], env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_ready(self.base, self.proc, path="/healthz", timeout=90)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture
def nodes(tmp_path: Path, s3_server: S3Server, cluster: dict) -> Iterator[tuple[Node, Node, str]]:
    redis_url = require_redis()
    bucket = s3_server.new_bucket()
    with fresh_postgres_database("clipgan_nodes") as db_url:
        migrate.upgrade(db_url)
        shared = {"CLIPGAN_ENV": "prod", "CLIPGAN_SECRET_KEY": SECRET_KEY,
                  "CLIPGAN_DATABASE_URL": db_url, "CLIPGAN_REDIS_URL": redis_url,
                  "CLIPGAN_STORAGE_URL": f"s3://{bucket}/clipgan", **s3_server.env()}
        a = Node("a", tmp_path / "a", {**shared, "CLIPGAN_DISPATCHER_ENABLED": "false"})
        try:
            b = Node("b", tmp_path / "b", {
                **shared, "CLIPGAN_ML_TRANSPORT": "http", "CLIPGAN_ML_URL": cluster["url"],
                "CLIPGAN_ML_SECRET": CLUSTER_SECRET})
            try:
                yield a, b, bucket
            finally:
                b.stop()
        finally:
            a.stop()


def _objects(s3_server: S3Server, bucket: str) -> list[str]:
    store = S3BlobStore(f"s3://{bucket}/clipgan", **s3_server.config())

    async def listed() -> list[str]:
        return [blob.key async for blob in store.scan()]

    return asyncio.run(listed())


def test_a_job_submitted_on_a_runs_on_b_and_downloads_anywhere(nodes, s3_server) -> None:
    a, b, bucket = nodes
    httpx.post(f"{a.base}/v1/users", json={"username": "alice", "email": "alice@x.io",
                                           "password": "password123"}).raise_for_status()
    tokens = httpx.post(f"{b.base}/v1/auth/token",  # signed up on A, signed in on B
                        data={"username": "alice", "password": "password123"}).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    with httpx.Client(base_url=a.base, headers=auth, timeout=30) as on_a, \
            httpx.Client(base_url=b.base, headers=auth, timeout=30) as on_b:
        r = on_a.post("/v1/jobs", json={"prompt": "blue hair", "steps": 6, "seed": 3,
                                        "preview_every": 2})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (job := on_a.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job

        picture = on_a.get(f"/v1/jobs/{job_id}/image")  # stored by B, read by A
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        for link in (job["image_url"], job["preview_url"]):  # signed by A, opened on B
            opened = httpx.get(b.base + _path(link))
            assert opened.status_code == 200 and opened.content.startswith(b"\x89PNG")
        assert httpx.get(b.base + _path(job["image_url"])).content == picture.content
        again = on_b.get(f"/v1/jobs/{job_id}/image",
                         headers={"If-None-Match": picture.headers["ETag"]})
        assert again.status_code == 304  # the same ETag on every node

        stored = _objects(s3_server, bucket)
        assert len(stored) == 2  # the picture and its latest preview, in the bucket
        for node in (a, b):  # and nothing on either node's disk
            assert not (node.data_dir / "blobs").exists()

        assert on_b.delete(f"/v1/jobs/{job_id}").json()["deleted"] is True
        assert on_a.get(f"/v1/jobs/{job_id}").status_code == 404
        assert httpx.get(a.base + _path(job["image_url"])).status_code == 404
        assert _objects(s3_server, bucket) == []


def _path(link: str) -> str:
    """A link as a path on any node (links may be absolute)."""
    return "/" + link.split("://", 1)[-1].split("/", 1)[-1] if "://" in link else link
