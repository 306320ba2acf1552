"""Web backend throughput and latency: job submission and status polling vs a trivial route.

Starts a real uvicorn server (one worker) per database, then drives it with 1..200
concurrent clients for a few seconds per level and prints requests/s and p50/p99
latency for: GET /healthz (baseline: no database), POST /v1/jobs, GET /v1/jobs/{id}.
The ratio to the baseline is the figure that survives a noisy machine; note the
load generator shares the machine (2 cores here), so absolute numbers are a floor.

  python bench/web.py [--seconds 3] [--levels 1 10 50 200] [--databases sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import psycopg

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(base: str, method: str, path: str, concurrency: int, seconds: float,
                headers: dict[str, str], body: dict | None = None,
                ) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=60) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code >= 400

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies), p99, errors


def start_server(database_url: str, data_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "CLIPGAN_ENV": "prod", "CLIPGAN_SECRET_KEY": secrets.token_hex(32),
           "CLIPGAN_DATABASE_URL": database_url, "CLIPGAN_DATA_DIR": data_dir,
           "CLIPGAN_SUBMISSIONS_PER_MINUTE": "100000000", "CLIPGAN_MAX_ACTIVE_JOBS": "100000000",
           "CLIPGAN_DAILY_IMAGES": "100000000"}
    subprocess.run([sys.executable, "-m", "clipgan.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    log = open(os.path.join(data_dir, "server.log"), "wb")  # noqa: SIM115 (lives with proc)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                             "web_backend.app:create_app_from_env", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], env=env,
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def bench_database(name: str, url: str, levels: list[int], seconds: float) -> None:
    proc, base = start_server(url, tempfile.mkdtemp(prefix="clipgan-bench-web-"))
    try:
        httpx.post(f"{base}/v1/users", json={"username": "bench", "email": "b@x.io",
                                             "password": "bench-password"}).raise_for_status()
        token = httpx.post(f"{base}/v1/auth/token", data={"username": "bench",
                                                          "password": "bench-password"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        job = httpx.post(f"{base}/v1/jobs", json={"prompt": "smile"}, headers=auth).json()
        print(f"\n{name}: {'clients':>7} {'route':<16} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'vs healthz':>10} {'errors':>6}")
        for level in levels:
            base_rps = None
            for label, method, path, body in (
                ("GET /healthz", "GET", "/healthz", None),
                ("POST /v1/jobs", "POST", "/v1/jobs", {"prompt": "blue hair", "steps": 20}),
                ("GET /v1/jobs/id", "GET", f"/v1/jobs/{job['id']}", None),
            ):
                rps, p50, p99, errors = asyncio.run(drive(base, method, path, level, seconds,
                                                          auth, body))
                base_rps = base_rps or rps
                print(f"{'':<{len(name) + 1}} {level:>7} {label:<16} {rps:>8.0f} "
                      f"{p50 * 1000:>8.1f} {p99 * 1000:>8.1f} {rps / base_rps:>10.2f} "
                      f"{errors:>6}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"one uvicorn worker; load generator in the same machine ({os.cpu_count()} cores)")
    if "sqlite" in args.databases:
        path = os.path.join(tempfile.mkdtemp(prefix="clipgan-bench-"), "bench.db")
        bench_database("sqlite", f"sqlite:///{path}", args.levels, args.seconds)
    if "postgresql" in args.databases:
        db = f"clipgan_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        try:
            bench_database("postgresql", f"postgresql+psycopg://postgres@127.0.0.1/{db}",
                           args.levels, args.seconds)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
