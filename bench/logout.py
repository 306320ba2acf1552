"""How soon a login (or an API key) that ends on one web process is refused by another.

Status reads trust a login their process has already checked (``CLIPGAN_LOGIN_CACHE_S``),
and an API key whose hash it checked, and every process forgets them when its job feed
announces that they ended. This bench starts two real uvicorn workers on one database
per feed, and for each round: signs in (or makes a key), reads a finished job on both
workers (so both trust it), ends it on worker A, then asks worker B every 2 ms until it
answers 401. It prints the time from A's answer to B's first refusal (p50/p99/max), and
in how many rounds B still served a read after A had answered.

What ends: ``logout`` (the login), ``revoke`` (an API key revoked), ``disable`` (an
administrator disables the key's account); ``expire``: a key that expires a second after
its first use (its expiry is set in the database before either worker reads it), timed
from that moment (no feed is involved: each process checks expiry on every use).

  python bench/logout.py [--rounds 50] [--feeds poll postgres redis]
                         [--ends logout revoke disable expire]
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


def _make_admin(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_admin = :t WHERE username = 'bench'"),
                     {"t": True})
    engine.dispose()


def _expire_soon(url: str, key_id: str, in_s: float) -> float:
    """Set the key to expire ``in_s`` from now; returns that moment (perf_counter)."""
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    from web_backend.core.models import utcnow

    engine = create_engine(url)
    at = utcnow() + timedelta(seconds=in_s)
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET expires_at = :at WHERE id = :id"),
                     {"at": at, "id": key_id})
    engine.dispose()
    return time.perf_counter() + in_s


def bench_feed(feed: str, rounds: int, end: str) -> None:
    kind = "postgresql" if feed == "postgres" else "sqlite"
    settings = {**_LIMITS, "job_feed": feed, "secret_key": secrets.token_hex(32)}
    if feed == "redis":
        settings["redis_url"] = os.environ.get("CLIPGAN_REDIS_URL", "redis://127.0.0.1:6379/0")
    with database(kind) as url:
        a, b = start_server(url, **settings), start_server(url, **settings)
        try:
            auth = sign_up(a.base)
            crowd = sign_up(a.base, "crowd")
            _make_admin(url)
            admin = _sign_in(httpx.Client(), a.base)
            owner = crowd if end == "disable" else auth
            job = httpx.post(f"{a.base}/v1/jobs", json={"prompt": "smile"}, headers=owner).json()
            _finish(url, job["id"])
            crowd_id = httpx.get(f"{a.base}/v1/admin/users", headers=admin).json()[-1]["id"]
            heard_ms: list[float] = []
            served_after: list[int] = []
            with httpx.Client(timeout=10) as client:
                for _ in range(rounds):
                    if end == "logout":
                        headers = _sign_in(client, a.base)
                    else:
                        made = client.post(f"{a.base}/v1/users/me/api-keys",
                                           json={"name": "bench"}, headers=owner).json()
                        headers = {"Authorization": f"Bearer {made['key']}"}
                    if end == "expire":  # what a key's first use learns: when it expires
                        expires = _expire_soon(url, made["id"], 1.0)
                    for server in (a, b, b):
                        client.get(f"{server.base}/v1/jobs/{job['id']}",
                                   headers=headers).raise_for_status()
                    if end == "logout":
                        client.post(f"{a.base}/v1/auth/logout",
                                    headers=headers).raise_for_status()
                        ended = time.perf_counter()
                    elif end == "revoke":
                        client.delete(f"{a.base}/v1/users/me/api-keys/{made['id']}",
                                      headers=owner).raise_for_status()
                        ended = time.perf_counter()
                    elif end == "disable":
                        client.post(f"{a.base}/v1/admin/users/{crowd_id}/disable",
                                    headers=admin).raise_for_status()
                        ended = time.perf_counter()
                    else:
                        ended = expires
                    served = 0
                    while client.get(f"{b.base}/v1/jobs/{job['id']}",
                                     headers=headers).status_code == 200:
                        served += time.perf_counter() > ended
                        time.sleep(0.002)
                    heard_ms.append(max(0.0, time.perf_counter() - ended) * 1e3)
                    served_after.append(served)
                    if end == "disable":
                        client.post(f"{a.base}/v1/admin/users/{crowd_id}/enable",
                                    headers=admin).raise_for_status()
                        crowd = _sign_in_as(client, a.base, "crowd")
                        owner = crowd
            heard_ms.sort()
            p99 = heard_ms[min(len(heard_ms) - 1, round(0.99 * (len(heard_ms) - 1)))]
            print(f"{feed:>8} {end:>8} {rounds:>6} {statistics.median(heard_ms):>8.1f} "
                  f"{p99:>8.1f} {heard_ms[-1]:>8.1f} {sum(1 for n in served_after if n):>14}",
                  flush=True)
        finally:
            a.stop()
            b.stop()


def _sign_in_as(client: httpx.Client, base: str, name: str) -> dict[str, str]:
    token = client.post(f"{base}/v1/auth/token", data={
        "username": name, "password": "bench-password"}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--feeds", nargs="+", default=["poll", "postgres", "redis"])
    parser.add_argument("--ends", nargs="+", default=["logout"],
                        choices=["logout", "revoke", "disable", "expire"])
    args = parser.parse_args()
    print(f"two uvicorn workers on one database ({os.cpu_count()} cores); logins cached "
          f"300 s, so only the feed ends them early\n"
          f"{'feed':>8} {'ends':>8} {'rounds':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'rounds B served after':>12}")
    for feed in args.feeds:
        for end in args.ends:
            bench_feed(feed, args.rounds, end)


if __name__ == "__main__":
    main()
