"""Web backend throughput and latency, measured with wrk: status reads and submissions vs
a trivial route on the same server.

Starts a real uvicorn server (one worker) per database and drives it with Debian's
``wrk`` (installed with apt when missing; C, so the load generator is not the
bottleneck, though it shares this machine's cores) at each concurrency level for a
few seconds, and prints requests/s and p50/p99 latency for: GET /healthz (the
baseline: no database), GET /v1/jobs/{id} of a finished job, of a queued one and of a
running one that moves a step every 0.5 s while it is read (each step makes every web
process drop that job's kept view), and POST /v1/jobs. The ratio to the baseline is the
figure that survives a noisy machine.

  python bench/web.py [--seconds 5] [--levels 1 16 64] [--databases sqlite postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import httpx
from webserver import database, sign_up, start_server

from web_backend.core.models import Job, utcnow

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        print("installing Debian's wrk (apt, as root)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or "wrk"


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, *, connections: int, seconds: float, headers: dict[str, str],
        body: dict | None = None) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx responses)."""
    script = None
    args = [ensure_wrk(), "-t", str(min(connections, 2)), "-c", str(connections), "-d",
            f"{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
            script = f.name
        args += ["-s", script]
    try:
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        if script:
            os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def _finish(database_url: str, job_id: str) -> None:
    """Mark a job succeeded, as a dispatcher would (the image itself is not read here)."""
    from sqlalchemy import create_engine, update

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(
            status="succeeded", started_at=utcnow(), finished_at=utcnow(),
            result_key="bench.png", progress_step=20, seed=1, score=0.3))
    engine.dispose()


@contextlib.contextmanager
def _progressing(database_url: str, job_id: str, every_s: float = 0.5) -> Iterator[None]:
    """The job runs and records a step every ``every_s`` while the block runs, as a
    dispatcher would (from another process, as far as the server knows)."""
    from sqlalchemy import create_engine, update

    engine = create_engine(database_url)
    stop = threading.Event()

    def steps() -> None:
        step = 0
        while not stop.wait(every_s):
            step += 1
            with engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == job_id).values(
                    status="running", started_at=utcnow(), progress_step=step,
                    progress_total=1_000_000))

    thread = threading.Thread(target=steps, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def bench_database(name: str, url: str, levels: list[int], seconds: float) -> None:
    server = start_server(url)
    try:
        auth = sign_up(server.base)
        queued = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                            headers=auth).json()
        finished = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                              headers=auth).json()
        _finish(url, finished["id"])
        running = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                             headers=auth).json()
        print(f"\n{name}: {'conns':>5} {'route':<22} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'vs healthz':>10} {'errors':>6}")
        for level in levels:
            base_rps = None
            for label, path, body in (
                ("GET /healthz", "/healthz", None),
                ("GET /v1/jobs/{finished}", f"/v1/jobs/{finished['id']}", None),
                ("GET /v1/jobs/{queued}", f"/v1/jobs/{queued['id']}", None),
                ("GET /v1/jobs/{running}", f"/v1/jobs/{running['id']}", None),
                ("POST /v1/jobs", "/v1/jobs", {"prompt": "blue hair", "steps": 20}),
            ):
                moving = _progressing(url, running["id"]) if "running" in label else None
                with moving or contextlib.nullcontext():
                    rps, p50, p99, errors = wrk(server.base + path, connections=level,
                                                seconds=seconds, headers=auth, body=body)
                base_rps = base_rps or rps
                print(f"{'':<{len(name) + 1}} {level:>5} {label:<22} {rps:>8.0f} "
                      f"{p50:>8.1f} {p99:>8.1f} {rps / base_rps:>10.2f} {errors:>6}",
                      flush=True)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"one uvicorn worker; wrk on the same machine ({os.cpu_count()} cores)")
    for kind in args.databases:
        with database(kind) as url:
            bench_database(kind, url, args.levels, args.seconds)


if __name__ == "__main__":
    main()
