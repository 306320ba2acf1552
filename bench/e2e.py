"""End-to-end overhead of the service around the ML work.

Starts `clipgan serve` (API + dispatcher + generator, demo weights, SQLite) once with
the private local Ray that `make run` uses and once with the in-process generator,
submits jobs over HTTP and reads their timestamps back. For every job:

  overhead = (finished_at - created_at) - ML total time (as the ML side measured it)
  claim    = started_at - created_at   (queue wait + dispatcher pick-up)

and prints p50 / p99 for 1 job at a time and for 20 concurrent jobs (with 20 slots,
so no job waits for capacity and the figure is dispatch + transport + storage).

  python bench/e2e.py [--jobs 20] [--steps 10] [--generator ray|in-process|both]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def run_round(base: str, auth: dict, n: int, steps: int) -> list[dict]:
    ids = [httpx.post(f"{base}/v1/jobs", headers=auth,
                      json={"prompt": f"anime girl {i}", "steps": steps, "seed": i,
                            "preview_every": 0}).json()["id"] for i in range(n)]
    done: dict[str, dict] = {}
    while len(done) < n:
        for job_id in ids:
            if job_id not in done:
                job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
        time.sleep(0.05)
    return list(done.values())


def report(label: str, jobs: list[dict]) -> None:
    failed = [j for j in jobs if j["status"] != "succeeded"]
    if failed:
        print(f"{label}: {len(failed)} failed: {failed[0]['error']}")
    ok = [j for j in jobs if j["status"] == "succeeded"]
    overhead = [seconds(j["created_at"], j["finished_at"]) - j["timings"]["total_s"]
                for j in ok]
    claim = [seconds(j["created_at"], j["started_at"]) for j in ok]
    ml = [j["timings"]["total_s"] for j in ok]
    print(f"{label:<22} ML p50 {statistics.median(ml) * 1000:7.0f} ms | overhead p50 "
          f"{statistics.median(overhead) * 1000:6.0f} ms  p99 "
          f"{percentile(overhead, 0.99) * 1000:6.0f} ms | of which claim p50 "
          f"{statistics.median(claim) * 1000:5.0f} ms", flush=True)


def bench_one(generator: str, jobs: int, steps: int) -> None:
    """Start ``clipgan serve --generator GENERATOR`` on a fresh data dir and measure it."""
    port, data = free_port(), tempfile.mkdtemp(prefix="clipgan-e2e-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
    slots = str(max(jobs, 1))
    env.update(CLIPGAN_DATA_DIR=data, CLIPGAN_ENV="dev", CLIPGAN_ML_SLOTS=slots,
               CLIPGAN_BATCH_SLOTS=slots, CLIPGAN_MAX_ACTIVE_JOBS="1000",
               CLIPGAN_SUBMISSIONS_PER_MINUTE="1000", RAY_USAGE_STATS_ENABLED="0")
    log = open(os.path.join(data, "server.log"), "w")  # noqa: SIM115 (lives with the server)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "serve", "--port", str(port),
                             "--generator", generator], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        httpx.post(f"{base}/v1/users", json={"username": "bench", "email": "b@x.io",
                                             "password": "bench-password"}).raise_for_status()
        token = httpx.post(f"{base}/v1/auth/token", data={"username": "bench",
                                                          "password": "bench-password"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        print(f"\n--generator {generator}: ready {ready_s:.1f} s after start "
              "(process start to /readyz 200)", flush=True)
        run_round(base, auth, 1, 2)  # warm-up
        sequential = []
        for _ in range(10):
            sequential += run_round(base, auth, 1, steps)
        report("1 job at a time (x10)", sequential)
        report(f"{jobs} concurrent jobs", run_round(base, auth, jobs, steps))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--generator", choices=("ray", "in-process", "both"), default="both")
    args = parser.parse_args()
    print(f"clipgan serve, SQLite, demo weights, {args.steps} steps/job, "
          f"{os.cpu_count()} cores")
    modes = ("ray", "in-process") if args.generator == "both" else (args.generator,)
    for generator in modes:
        bench_one(generator, args.jobs, args.steps)


if __name__ == "__main__":
    main()
