"""Pictures through each store: downloads per second and their latency, and the retention
sweeper's rate.

For each store (the local directory; an S3 bucket on moto's S3 server, an emulator in
Python started here, so its figure is moto's as much as ours), on PostgreSQL:

1. one uvicorn worker (as production runs it) serves ``GET /v1/jobs/{id}/image`` of a
   finished job whose picture (``--picture-kb`` of incompressible PNG) is in that store,
   driven by ``wrk`` at ``--connections``; ``/healthz`` in the same run is the baseline
   (the ratio survives a noisy machine);
2. ``--jobs`` finished jobs, each with its own picture, are aged past the retention
   period, and one ``RetentionSweeper`` pass deletes them (rows and objects, batches of
   500): jobs per second.

  python bench/storage.py [--seconds 5] [--connections 16] [--jobs 2000] [--stores local s3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import create_engine, update
from web import wrk
from webserver import database, free_port, sign_up, start_server

from web_backend.core.db import make_session_factory
from web_backend.core.models import Job, utcnow
from web_backend.jobs.retention import RetentionSweeper
from web_backend.storage.keeper import BlobKeeper
from web_backend.storage.stores import open_store


def noise_png(kb: int) -> bytes:
    side = max(8, int((kb * 1024 / 3) ** 0.5))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), secrets.token_bytes(side * side * 3)).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Moto:
    """moto's S3 server in a subprocess, with a bucket; stopped by its pid."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        httpx.put(f"{self.endpoint}/clipgan-bench", timeout=10).raise_for_status()
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _finish(sessions, keeper: BlobKeeper, job_ids: list[str], pictures: list[bytes],
            *, aged_days: float = 0.0) -> None:
    async def store_all() -> list[str]:
        keys = []
        for job_id, picture in zip(job_ids, pictures, strict=True):
            keys.append(await keeper.save(job_id, picture))
        return keys

    keys = asyncio.run(store_all())
    with sessions() as session:
        for job_id, key in zip(job_ids, keys, strict=True):
            session.execute(update(Job).where(Job.id == job_id).values(
                status="succeeded", started_at=utcnow(), result_key=key, progress_step=20,
                finished_at=utcnow() - timedelta(days=aged_days), seed=1, score=0.3))
        session.commit()


def bench_store(kind: str, args: argparse.Namespace) -> None:
    moto = Moto() if kind == "s3" else None
    root = tempfile.mkdtemp(prefix="clipgan-bench-blobs-")
    url = "s3://clipgan-bench/results" if moto else f"file://{root}"
    if moto:
        os.environ.update(moto.env)  # the standard AWS chain, for the server and for us
    try:
        with database("postgresql") as db_url:
            server = start_server(db_url, storage_url=url)
            engine = create_engine(db_url)
            sessions = make_session_factory(engine, writes=True)
            keeper = BlobKeeper(store=open_store(url, default_root=Path(root),
                                                 timeout_s=10), sessions=sessions)
            try:
                auth = sign_up(server.base)
                job_id = httpx.post(f"{server.base}/v1/jobs", headers=auth,
                                    json={"prompt": "smile"}).json()["id"]
                picture = noise_png(args.picture_kb)
                _finish(sessions, keeper, [job_id], [picture])
                image_url = f"{server.base}/v1/jobs/{job_id}/image"
                assert httpx.get(image_url, headers=auth).content == picture
                base = wrk(f"{server.base}/healthz", connections=args.connections,
                           seconds=args.seconds, headers={})
                got = wrk(image_url, connections=args.connections, seconds=args.seconds,
                          headers=auth)
                print(f"{kind:5} download {len(picture) // 1024} KB: {got[0]:7.0f} req/s  "
                      f"p50 {got[1]:6.1f} ms  p99 {got[2]:6.1f} ms  errors {got[3]}  "
                      f"({got[0] / base[0]:.2f}x /healthz at {base[0]:.0f} req/s, "
                      f"{got[0] * len(picture) / 1e6:.0f} MB/s)", flush=True)

                ids: list[str] = []
                while len(ids) < args.jobs:
                    made = httpx.post(f"{server.base}/v1/jobs", headers=auth, timeout=30,
                                      json={"prompt": "smile", "n": 16}).json()
                    ids += made.get("batch") or [made["id"]]
                ids = ids[:args.jobs]
            finally:
                server.stop()  # its sweeper lets go of the lease
            started = time.perf_counter()
            _finish(sessions, keeper, ids, [secrets.token_bytes(2048) for _ in ids],
                    aged_days=10)
            filled = time.perf_counter() - started
            sweeper = RetentionSweeper(sessions=sessions, blobs=keeper, days=3, batch=500,
                                       owner="bench")
            started = time.perf_counter()
            swept = asyncio.run(sweeper.sweep())
            elapsed = time.perf_counter() - started
            print(f"{kind:5} retention: {swept.jobs} jobs and {swept.blobs} pictures in "
                  f"{elapsed:.2f} s = {swept.jobs / elapsed:,.0f} jobs/s (storing them took "
                  f"{filled:.1f} s = {len(ids) / filled:,.0f}/s)", flush=True)
            engine.dispose()
    finally:
        if moto:
            moto.stop()
            for name in moto.env:
                os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--picture-kb", type=int, default=200)
    parser.add_argument("--stores", nargs="+", default=["local", "s3"],
                        choices=["local", "s3"])
    args = parser.parse_args()
    for kind in args.stores:
        bench_store(kind, args)


if __name__ == "__main__":
    main()
