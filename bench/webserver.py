"""What the web benches share: a real one-worker server on a database of its own.

Each bench starts ``uvicorn`` exactly as production does (``create_app_from_env``),
with limits raised so that the bench measures the server, not its refusals.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

__all__ = ["Server", "database", "free_port", "start_server"]

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
UNLIMITED = "100000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL database (dropped afterwards), migrated."""
    if kind == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='clipgan-bench-')}/bench.db"
    else:
        name = f"clipgan_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1/{name}"
    try:
        subprocess.run([sys.executable, "-m", "clipgan.cli", "db", "upgrade"], check=True,
                       capture_output=True, env={**os.environ, "CLIPGAN_DATABASE_URL": url,
                                                 "CLIPGAN_ENV": "dev"})
        yield url
    finally:
        if kind != "sqlite":
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    env: dict[str, str]          # what it was started with (the secret key included)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(database_url: str, **settings: str) -> Server:
    """One uvicorn worker; ``settings``: extra ``CLIPGAN_*`` variables (without prefix)."""
    data_dir = tempfile.mkdtemp(prefix="clipgan-bench-web-")
    port = free_port()
    env = {**os.environ, "CLIPGAN_ENV": "prod", "CLIPGAN_SECRET_KEY": secrets.token_hex(32),
           "CLIPGAN_DATABASE_URL": database_url, "CLIPGAN_DATA_DIR": data_dir,
           "CLIPGAN_SUBMISSIONS_PER_MINUTE": UNLIMITED, "CLIPGAN_MAX_ACTIVE_JOBS": UNLIMITED,
           "CLIPGAN_DAILY_IMAGES": UNLIMITED, "CLIPGAN_LOGIN_ATTEMPTS_PER_MINUTE": UNLIMITED,
           "CLIPGAN_REGISTRATIONS_PER_HOUR": UNLIMITED,
           **{f"CLIPGAN_{name.upper()}": value for name, value in settings.items()}}
    log = open(os.path.join(data_dir, "server.log"), "wb")  # noqa: SIM115 (lives with proc)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                             "web_backend.app:create_app_from_env", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], env=env,
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return Server(proc, base, env)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start; see {data_dir}/server.log")


def sign_up(base: str, username: str = "bench") -> dict[str, str]:
    """A new account's Authorization header."""
    httpx.post(f"{base}/v1/users", json={"username": username, "email": f"{username}@x.io",
                                         "password": "bench-password"}).raise_for_status()
    token = httpx.post(f"{base}/v1/auth/token", data={"username": username,
                                                      "password": "bench-password"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}
