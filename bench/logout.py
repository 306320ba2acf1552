"""How soon a login that ends on one web process is refused by another.

Status reads trust a login their process has already checked (``CLIPGAN_LOGIN_CACHE_S``),
and every process forgets it when its job feed announces that the login ended. This
bench starts two real uvicorn workers on one database per feed, and for each round: signs
in, reads a finished job on both workers (so both trust the login), logs out on worker A,
then asks worker B every 2 ms until it answers 401. It prints the time from the logout's
response to B's first refusal (p50/p99/max), and in how many rounds B still served a read
after the logout had answered.

  python bench/logout.py [--rounds 50] [--feeds poll postgres redis]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time

import httpx
from web import _finish
from webserver import UNLIMITED, database, sign_up, start_server

_LIMITS = {"login_attempts_per_minute": UNLIMITED, "registrations_per_hour": UNLIMITED,
           "failed_sign_ins_per_hour": UNLIMITED, "login_cache_s": "300"}


def _sign_in(client: httpx.Client, base: str) -> dict[str, str]:
    token = client.post(f"{base}/v1/auth/token", data={
        "username": "bench", "password": "bench-password"}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def bench_feed(feed: str, rounds: int) -> None:
    kind = "postgresql" if feed == "postgres" else "sqlite"
    settings = {**_LIMITS, "job_feed": feed, "secret_key": secrets.token_hex(32)}
    if feed == "redis":
        settings["redis_url"] = os.environ.get("CLIPGAN_REDIS_URL", "redis://127.0.0.1:6379/0")
    with database(kind) as url:
        a, b = start_server(url, **settings), start_server(url, **settings)
        try:
            auth = sign_up(a.base)
            job = httpx.post(f"{a.base}/v1/jobs", json={"prompt": "smile"}, headers=auth).json()
            _finish(url, job["id"])
            heard_ms: list[float] = []
            served_after: list[int] = []
            with httpx.Client(timeout=10) as client:
                for _ in range(rounds):
                    headers = _sign_in(client, a.base)
                    for server in (a, b, b):
                        client.get(f"{server.base}/v1/jobs/{job['id']}",
                                   headers=headers).raise_for_status()
                    client.post(f"{a.base}/v1/auth/logout", headers=headers).raise_for_status()
                    ended, served = time.perf_counter(), 0
                    while client.get(f"{b.base}/v1/jobs/{job['id']}",
                                     headers=headers).status_code == 200:
                        served += 1
                        time.sleep(0.002)
                    heard_ms.append((time.perf_counter() - ended) * 1e3)
                    served_after.append(served)
            heard_ms.sort()
            p99 = heard_ms[min(len(heard_ms) - 1, round(0.99 * (len(heard_ms) - 1)))]
            print(f"{feed:>8} {rounds:>6} {statistics.median(heard_ms):>8.1f} {p99:>8.1f} "
                  f"{heard_ms[-1]:>8.1f} {sum(1 for n in served_after if n):>14}",
                  flush=True)
        finally:
            a.stop()
            b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--feeds", nargs="+", default=["poll", "postgres", "redis"])
    args = parser.parse_args()
    print(f"two uvicorn workers on one database ({os.cpu_count()} cores); logins cached "
          f"300 s, so only the feed ends them early\n"
          f"{'feed':>8} {'rounds':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'rounds B served after':>12}")
    for feed in args.feeds:
        bench_feed(feed, args.rounds)


if __name__ == "__main__":
    main()
