"""Web backend throughput and latency, measured with wrk: status reads and submissions vs
a trivial route on the same server, and submissions at several queue lengths.

Starts a real uvicorn server (one worker) per database and drives it with Debian's
``wrk`` (installed with apt when missing; C, so the load generator is not the
bottleneck, though it shares this machine's cores) at each concurrency level for a
few seconds, and prints requests/s and p50/p99 latency for: GET /healthz (the
baseline: no database), GET /v1/jobs/{id} of a finished job, of a queued one and of a
running one that moves a step every 0.5 s while it is read (each step makes every web
process drop that job's kept view), and POST /v1/jobs. The ratio to the baseline is the
figure that survives a noisy machine.

``--queued 0 10000 100000``: POST /v1/jobs again with that many jobs of another
account waiting in the queue (written straight into the database before the rounds,
then vacuumed and analysed as autovacuum would be shortly after such a load), each
round next to /healthz, so a cost that grows with the queue shows as a falling ratio;
``--repeat`` rounds each, the median shown with the spread. Submissions come from
``--users`` accounts in turn (64: a crowd, each account within its own limits' reach;
1: one account submitting as fast as it can). ``--profile``: py-spy records the server
(threads holding the GIL) during the first submission round and prints its busiest
frames (``--profile-out`` keeps the raw profile).

  python bench/web.py [--seconds 5] [--levels 1 16 64] [--databases sqlite postgresql]
  python bench/web.py --routes submit --levels 16 --queued 0 10000 100000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator

import httpx
from webserver import Server, database, sign_up, start_server

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
        body: dict | None = None, tokens: list[str] | None = None,
        ) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx responses). ``tokens``: each request signs in
    as the next of these accounts (a crowd, not one account submitting very fast)."""
    script = None
    args = [ensure_wrk(), "-t", str(min(connections, 2)), "-c", str(connections), "-d",
            f"{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        if not (tokens and name == "Authorization"):
            args += ["-H", f"{name}: {value}"]
    if body is not None:
        lua = (f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
               'wrk.headers["Content-Type"] = "application/json"\n')
        if tokens:
            lua += ("tokens = {" + ", ".join(json.dumps(t) for t in tokens) + "}\n"
                    "counter = 0\n"
                    "request = function()\n"
                    "  counter = counter + 1\n"
                    "  wrk.headers[\"Authorization\"] = \"Bearer \" .. "
                    "tokens[(counter % #tokens) + 1]\n"
                    "  return wrk.format()\n"
                    "end\n")
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(lua)
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


ROUTES = ("healthz", "finished", "queued", "running", "submit")


def prefill(database_url: str, jobs: int) -> None:
    """``jobs`` queued jobs of a separate account, straight into the database, numbered
    in the queue the way admission numbers them (where the schema has queue numbers)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(database_url)
    numbered = "queue_seq" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.begin() as conn:
        owner = conn.execute(text("SELECT id FROM users WHERE username = 'filler'")).scalar()
        if owner is None:
            conn.execute(text("INSERT INTO users (username, email, password_hash, is_admin, "
                              "is_active, created_at) VALUES ('filler', 'filler@x.io', 'x', "
                              ":f, :t, :now)"), {"f": False, "t": True, "now": utcnow()})
            owner = conn.execute(text("SELECT id FROM users WHERE username = 'filler'")).scalar()
        start = 0
        if numbered:
            start = conn.execute(text("UPDATE counters SET value = value + :n WHERE name = "
                                      "'job_seq' RETURNING value"), {"n": jobs}).scalar() - jobs
        now = utcnow()
        rows = [{"id": str(uuid.uuid4()), "user_id": owner, "status": "queued",
                 "request": '{"prompt": "filler", "steps": 20}', "created_at": now,
                 "updated_at": now, "progress_step": 0, "progress_total": 20,
                 "cancel_requested": False, "attempts": 0, "fencing_token": 0,
                 **({"queue_seq": start + i + 1} if numbered else {})}
                for i in range(jobs)]
        columns = list(rows[0]) if rows else []
        statement = text(f"INSERT INTO jobs ({', '.join(columns)}) VALUES "
                         f"({', '.join(':' + c for c in columns)})")
        for i in range(0, len(rows), 5000):
            conn.execute(statement, rows[i:i + 5000])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # what autovacuum (or an operator after a restore) does after a bulk load, done
        # now rather than during a round: fresh statistics (plans made when the table was
        # small are made again), the new pages vacuumed, SQLite's WAL checkpointed
        if engine.dialect.name == "postgresql":
            conn.execute(text("VACUUM ANALYZE jobs"))
        else:
            conn.execute(text("ANALYZE jobs"))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()


def _queued(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'queued'")).scalar()
    engine.dispose()
    return int(count or 0)


@contextlib.contextmanager
def _profiled(server: Server, out: str | None) -> Iterator[None]:
    """py-spy on the server while the block runs; then its busiest frames."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    path = out or tempfile.mktemp(suffix=".txt", prefix="clipgan-submit-")
    proc = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--format", "raw",
                             "--output", path, "--rate", "200", "--nonblocking", "--gil",
                             "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    print_profile(path)


def print_profile(path: str, top: int = 15) -> None:
    """Own time (leaf frames) and total time (frames on the stack) from a raw profile."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in open(path):  # noqa: SIM115 (a short read)
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        n = int(count)
        samples += n
        own[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            total[frame] += n
    print(f"    profile: {samples} samples; busiest frames (own / on the stack):")
    for frame, n in own.most_common(top):
        print(f"    {100 * n / samples:5.1f}% own   {frame}")
    interesting = [(f, n) for f, n in total.most_common(200)
                   if any(k in f for k in ("web_backend", "sqlalchemy", "psycopg", "sqlite",
                                           "pydantic", "starlette", "fastapi", "limits"))]
    for frame, n in interesting[:top]:
        print(f"    {100 * n / samples:5.1f}% total {frame}")


def _short(frame: str) -> str:
    """'function (path/to/module.py:12)' -> 'function (module.py)'."""
    name, _, where = frame.partition(" (")
    module = where.split(":")[0].rsplit("/", 2)
    return f"{name} ({'/'.join(module[-2:])})"


def _round(server: Server, path: str, body: dict | None, auth: dict[str, str], level: int,
           seconds: float, tokens: list[str] | None = None) -> tuple[float, float, float, int]:
    return wrk(server.base + path, connections=level, seconds=seconds, headers=auth, body=body,
               tokens=tokens)


def crowd(server: Server, users: int) -> list[str]:
    """``users`` more accounts' access tokens (the submitters of a crowd)."""
    return [sign_up(server.base, f"crowd{i}")["Authorization"].removeprefix("Bearer ")
            for i in range(users)]


def bench_database(name: str, url: str, levels: list[int], seconds: float,
                   routes: list[str], queued: list[int], profile: bool,
                   profile_out: str | None, users: int, repeat: int) -> None:
    server = start_server(url)
    submit = {"prompt": "blue hair", "steps": 20}
    try:
        auth = sign_up(server.base)
        tokens = crowd(server, users) if users > 1 else None
        queued_job = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                                headers=auth).json()
        finished = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                              headers=auth).json()
        _finish(url, finished["id"])
        running = httpx.post(f"{server.base}/v1/jobs", json={"prompt": "smile"},
                             headers=auth).json()
        print(f"\n{name}: {'conns':>5} {'route':<26} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'vs healthz':>10} {'errors':>6}")
        paths = {"healthz": ("GET /healthz", "/healthz", None),
                 "finished": ("GET /v1/jobs/{finished}", f"/v1/jobs/{finished['id']}", None),
                 "queued": ("GET /v1/jobs/{queued}", f"/v1/jobs/{queued_job['id']}", None),
                 "running": ("GET /v1/jobs/{running}", f"/v1/jobs/{running['id']}", None),
                 "submit": ("POST /v1/jobs", "/v1/jobs", submit)}
        profiled = not profile
        for level in levels:
            base_rps = None
            for route in ("healthz", *[r for r in routes if r != "healthz"]):
                label, path, body = paths[route]
                moving = _progressing(url, running["id"]) if route == "running" else None
                spy = (_profiled(server, profile_out) if route == "submit" and not profiled
                       else None)
                profiled = profiled or spy is not None
                with moving or contextlib.nullcontext(), spy or contextlib.nullcontext():
                    rps, p50, p99, errors = _round(server, path, body, auth, level, seconds,
                                                   tokens if route == "submit" else None)
                base_rps = base_rps or rps
                print(f"{'':<{len(name) + 1}} {level:>5} {label:<26} {rps:>8.0f} "
                      f"{p50:>8.1f} {p99:>8.1f} {rps / base_rps:>10.2f} {errors:>6}",
                      flush=True)
        for length in queued:
            level = levels[-1]
            waiting = _queued(url)
            if length > waiting:
                prefill(url, length - waiting)
            waiting = _queued(url)  # at least the length asked (earlier rounds queued more)
            rounds = []
            for _ in range(repeat):  # this machine is noisy: the median of a few rounds
                base = _round(server, "/healthz", None, auth, level, seconds)
                rps, p50, p99, errors = _round(server, "/v1/jobs", submit, auth, level,
                                               seconds, tokens)
                rounds.append((rps, p50, p99, rps / base[0], errors))
            rps, p50, p99, ratio, _ = sorted(rounds)[len(rounds) // 2]
            errors = sum(r[4] for r in rounds)
            label = f"POST /v1/jobs @{waiting:,} queued"
            spread = (f"  ({min(r[0] for r in rounds):.0f}-{max(r[0] for r in rounds):.0f} "
                      f"req/s, p99 {min(r[2] for r in rounds):.0f}-"
                      f"{max(r[2] for r in rounds):.0f} ms)") if repeat > 1 else ""
            print(f"{'':<{len(name) + 1}} {level:>5} {label:<26} {rps:>8.0f} {p50:>8.1f} "
                  f"{p99:>8.1f} {ratio:>10.2f} {errors:>6}{spread}", flush=True)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--queued", type=int, nargs="*", default=[],
                        help="also submit at these queue lengths (0 10000 100000)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the first submission round")
    parser.add_argument("--profile-out", default=None)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per queue length (the median is shown, and the spread)")
    parser.add_argument("--users", type=int, default=64,
                        help="submissions come from this many accounts in turn")
    args = parser.parse_args()
    print(f"one uvicorn worker; wrk on the same machine ({os.cpu_count()} cores)")
    for kind in args.databases:
        with database(kind) as url:
            bench_database(kind, url, args.levels, args.seconds, args.routes, args.queued,
                           args.profile, args.profile_out, args.users, args.repeat)


if __name__ == "__main__":
    main()
