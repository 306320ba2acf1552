"""What hostile clients cost one `clipgan web` process (loopback only, bounded in time).

Starts `clipgan web` (SQLite, dev), then measures on that one process:

1. its memory (RSS) before, at peak and after a 400 MB request body sent to the
   anonymous `POST /v1/users`, chunked and with Content-Length;
2. `GET /v1/users/me` latency (p50 / p99) with no other load, then with 100 slow
   clients holding connections open (headers and half a body, never finished;
   each is reopened as soon as the server times it out), as a ratio in one run.

  python bench/hostile_clients.py [--slow 100] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_body(port: int, chunked: bool, total_mb: int = 400) -> tuple[float, str]:
    """Send up to ``total_mb`` MB; returns (MB the server accepted before answering, status)."""
    sock = socket.create_connection(("127.0.0.1", port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_mb << 20}"
    sock.sendall(f"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    block = b"a" * (1 << 20)
    piece = (b"%x\r\n" % len(block)) + block + b"\r\n" if chunked else block
    sent = 0
    sock.settimeout(10)
    try:
        for _ in range(total_mb):
            sock.sendall(piece)
            sent += 1
    except OSError:
        pass
    try:
        status = sock.recv(64).split(b"\r\n")[0].decode()
    except OSError:
        status = "(connection reset)"
    sock.close()
    return sent, status


def latency_ms(base: str, headers: dict[str, str], n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for _ in range(n):
            start = time.perf_counter()
            client.get("/v1/users/me").raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return times


def hold_slow_clients(port: int, count: int, stop: threading.Event) -> None:
    def one() -> None:
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 1000\r\n\r\n{\"user")
                sock.settimeout(0.5)
                while not stop.is_set():
                    try:
                        if not sock.recv(4096):
                            break  # the server gave up on us: come back at once
                    except TimeoutError:
                        continue
                sock.close()
            except OSError:
                time.sleep(0.1)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="clipgan-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
    env.update(CLIPGAN_ENV="dev", CLIPGAN_DATA_DIR=data_dir)
    proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "web", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        account = {"username": "bench", "email": "bench@example.com", "password": "password123"}
        httpx.post(f"{base}/v1/users", json=account).raise_for_status()
        token = httpx.post(f"{base}/v1/auth/token",
                           data={"username": "bench", "password": "password123"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        latency_ms(base, auth, 50)  # warm up

        print("1. a 400 MB body to POST /v1/users (anonymous)")
        for chunked in (True, False):
            before = rss_mb(proc.pid)
            peak = before
            done: list[tuple[float, str]] = []
            sender = threading.Thread(
                target=lambda c=chunked, out=done: out.append(big_body(port, c)))
            sender.start()
            while sender.is_alive():
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.01)
            time.sleep(0.5)
            sent, status = done[0]
            print(f"   {'chunked' if chunked else 'Content-Length'}: {status}; client got "
                  f"{sent:.0f} MB out before the refusal; web RSS {before:.0f} MB before, "
                  f"{peak:.0f} MB peak, {rss_mb(proc.pid):.0f} MB after")

        print(f"2. GET /v1/users/me latency, {args.requests} requests one after another")
        quiet = latency_ms(base, auth, args.requests)
        stop = threading.Event()
        hold_slow_clients(port, args.slow, stop)
        time.sleep(2)
        loaded = latency_ms(base, auth, args.requests)
        stop.set()
        print(f"   no slow clients:     p50 {pct(quiet, 50):6.1f} ms  p99 {pct(quiet, 99):6.1f} ms")
        print(f"   {args.slow} slow clients:    p50 {pct(loaded, 50):6.1f} ms  "
              f"p99 {pct(loaded, 99):6.1f} ms")
        print(f"   ratio (slow/none):   p50 {pct(loaded, 50) / pct(quiet, 50):.2f}x  "
              f"p99 {pct(loaded, 99) / pct(quiet, 99):.2f}x; web RSS {rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
