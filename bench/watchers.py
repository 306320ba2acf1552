"""Open event streams on one web process: what a crowd of open pages costs.

For each feed (poll = SQLite alone, postgres = LISTEN/NOTIFY, redis = pub/sub with
SQLite) and each N, starts one uvicorn worker, makes N jobs (one open page each,
the usual case) and opens N ``/events`` streams, arriving at ``--arrivals`` per
second (a crowd), then for ``--seconds`` with all N open:

* 16 of the jobs run, a progress write each every 0.5 s (a full GPU deployment),
  written by this process as a standalone dispatcher would (the queue's own
  transitions, through the feed's publishing path);
* a signed-in user polls ``GET /v1/jobs/{id}`` 10 times a second;
* 10 new streams a second open (and close after their first event): a page opened
  while N others are.

Prints first-event p50/p99 (connect -> first ``status`` event) of the new streams
under load and, apart, of the N arriving; progress lag p50/p99 (commit of the write
-> event read by the client); status GET p50/p99 during the load; and the server's
CPU (% of one core) over the steady part. Streams are raw asyncio sockets (one
coroutine each, no HTTP client library), so the load generator is not the
bottleneck: its CPU is printed too.

  python bench/watchers.py [--streams 100 1000 3000] [--feeds poll postgres redis]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
from webserver import Server, database, sign_up, start_server

from web_backend.app import build_services
from web_backend.core.models import utcnow
from web_backend.core.security import sign_link
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.jobs.queue import Claim
from web_backend.services import Services

REDIS_URL = "redis://127.0.0.1:6379/0"
RUNNING = 16
PROGRESS_EVERY_S = 0.5


@dataclass
class Observed:
    first_event_s: list[float] = field(default_factory=list)   # streams opened under load
    arrival_s: list[float] = field(default_factory=list)       # the N arriving
    lag_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)
    written: dict[tuple[str, int], float] = field(default_factory=dict)
    refused: int = 0
    cpu: float = 0.0          # the server's CPU seconds per second, steady part
    own_cpu: float = 0.0      # this load generator's


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def follow(host: str, port: int, job_id: str, path: str, seen: Observed,
                 opened: asyncio.Event, stop: asyncio.Event, first: list[float]) -> None:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            seen.refused += 1
            return
        event_id = -1
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            reading = asyncio.ensure_future(reader.readline())
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                return
            line = reading.result()
            if not line:
                return
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"event: status") and not opened.is_set():
                first.append(time.perf_counter() - start)
                opened.set()
            elif line.startswith(b"event: progress"):
                written = seen.written.get((job_id, event_id))
                if written is not None:
                    seen.lag_s.append(time.perf_counter() - written)
    finally:
        writer.close()


async def poll_status(base: str, auth: dict[str, str], job_ids: list[str], seen: Observed,
                      stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            r = await client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")
            r.raise_for_status()
            seen.get_s.append(time.perf_counter() - t0)
            i += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))


async def probe(host: str, port: int, links: list[tuple[str, str]], seen: Observed,
                stop: asyncio.Event) -> None:
    """New pages opening while the crowd is there: each closes after its first event."""
    i = 0
    while not stop.is_set():
        job_id, path = links[i % len(links)]
        done = asyncio.Event()
        task = asyncio.create_task(follow(host, port, job_id, path, seen, done, done,
                                          seen.first_event_s))
        await asyncio.sleep(0.1)
        i += 7
        await asyncio.wait_for(task, 30)


async def write_progress(services: Services, claims: list[Claim], seen: Observed,
                         stop: asyncio.Event) -> None:
    step = 0

    def renew(claim: Claim, step: int) -> None:
        with services.write_session_factory() as session:
            queue.renew(session, claim, lease_s=600, progress_step=step)
        seen.written[(claim.job_id, step)] = time.perf_counter()

    while not stop.is_set():
        tick = time.perf_counter()
        step += 1
        for claim in claims:
            await asyncio.to_thread(renew, claim, step)
        await asyncio.sleep(max(0.0, PROGRESS_EVERY_S - (time.perf_counter() - tick)))


def make_jobs(services: Services, user_id: int, n: int) -> tuple[list[str], list[Claim]]:
    now = utcnow()
    jobs = [queue.NewJob(id=str(uuid.uuid4()), user_id=user_id,
                         request={"prompt": f"bench {i}", "steps": 60}, image_prompt_key=None,
                         idempotency_key=None, progress_total=60, webhook_url=None,
                         webhook_events=None, batch_id=None, created_at=now)
            for i in range(n)]
    with services.write_session_factory() as session:
        queue.enqueue(session, jobs)
        session.commit()
    ids = [job.id for job in jobs]
    claims = []
    for _ in range(min(RUNNING, n)):
        with services.write_session_factory() as session:
            claim = queue.claim(session, owner="bench", lease_s=600)
        if claim is not None:
            claims.append(claim)
    return ids, claims


async def measure(server: Server, services: Services, n: int, seconds: float,
                  arrivals: float) -> Observed:
    auth = sign_up(server.base)
    user_id = httpx.get(f"{server.base}/v1/users/me", headers=auth).json()["id"]
    ids, claims = await asyncio.to_thread(make_jobs, services, user_id, n)
    url = urlparse(server.base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    key = server.env["CLIPGAN_SECRET_KEY"].encode()
    expires = int(time.time()) + 3600
    links = [(job_id, f"/v1/jobs/{job_id}/events?exp={expires}"
                       f"&sig={sign_link(key, job_id, 'events', expires)}") for job_id in ids]
    seen, stop = Observed(), asyncio.Event()
    opened = [asyncio.Event() for _ in ids]
    readers = []
    for i, (job_id, path) in enumerate(links):
        readers.append(asyncio.create_task(follow(host, port, job_id, path, seen, opened[i],
                                                  stop, seen.arrival_s)))
        await asyncio.sleep(1 / arrivals)
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), 120)
    cpu0, own0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
    load = [asyncio.create_task(write_progress(services, claims, seen, stop)),
            asyncio.create_task(poll_status(server.base, auth,
                                            [c.job_id for c in claims[:2]] + ids[-2:],
                                            seen, stop)),
            asyncio.create_task(probe(host, port, links, seen, stop))]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*load)
    elapsed = time.perf_counter() - t0
    seen.cpu = (server.cpu_seconds() - cpu0) / elapsed
    seen.own_cpu = (time.process_time() - own0) / elapsed
    await asyncio.gather(*readers, return_exceptions=True)
    return seen


def bench(feed: str, streams: list[int], seconds: float, arrivals: float) -> None:
    with database("postgresql" if feed == "postgres" else "sqlite") as url:
        extra = {"redis_url": REDIS_URL} if feed == "redis" else {}
        for n in streams:
            server = start_server(url, job_feed=feed, max_streams=str(n + 10),
                                  max_streams_per_user=str(n + 10), **extra)
            settings = WebSettings(env="prod", secret_key=server.env["CLIPGAN_SECRET_KEY"],
                                   data={"database_url": url, "dir": server.env[
                                       "CLIPGAN_DATA_DIR"], **extra}, feed={"kind": feed})
            services = build_services(settings)
            try:
                seen = asyncio.run(measure(server, services, n, seconds, arrivals))
            finally:
                server.stop()
                services.engine.dispose()
            print(f"{feed:<9} {n:>6} {pct(seen.first_event_s, .5) * 1e3:>9.0f} "
                  f"{pct(seen.first_event_s, .99) * 1e3:>9.0f} "
                  f"{pct(seen.arrival_s, .5) * 1e3:>9.0f} {pct(seen.arrival_s, .99) * 1e3:>9.0f} "
                  f"{pct(seen.lag_s, .5) * 1e3:>8.0f} {pct(seen.lag_s, .99) * 1e3:>8.0f} "
                  f"{len(seen.lag_s):>6} {pct(seen.get_s, .5) * 1e3:>7.1f} "
                  f"{pct(seen.get_s, .99) * 1e3:>7.1f} {seen.cpu * 100:>6.0f}% "
                  f"{seen.own_cpu * 100:>6.0f}% {seen.refused:>7}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--feeds", nargs="+", default=["poll", "postgres", "redis"],
                        choices=["poll", "postgres", "redis"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--arrivals", type=float, default=500.0,
                        help="streams opening per second before the steady part")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # N sockets, and the server's N
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    print(f"one uvicorn worker; {RUNNING} jobs progressing every {PROGRESS_EVERY_S} s; "
          f"times in ms; CPU in % of one core; {args.seconds:.0f} s steady state per row; "
          f"'1st' = a stream opened among the N, 'arr' = the N arriving at "
          f"{args.arrivals:.0f}/s")
    print(f"{'feed':<9} {'streams':>6} {'1st p50':>9} {'1st p99':>9} {'arr p50':>9} "
          f"{'arr p99':>9} {'lag p50':>8} "
          f"{'lag p99':>8} {'events':>6} {'GET p50':>7} {'GET p99':>7} {'server':>7} "
          f"{'bench':>7} {'refused':>7}")
    for feed in args.feeds:
        bench(feed, args.streams, args.seconds, args.arrivals)


if __name__ == "__main__":
    main()
