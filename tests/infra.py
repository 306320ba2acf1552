"""The real services tests run against, and what a missing one means.

On a developer's machine without PostgreSQL or Redis, the tests that need one are
skipped, each naming the service in the summary (``-ra``). With ``CI=true`` they are
required: an unreachable service fails the run instead of silently testing less.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
PG_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{{name}}"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@functools.cache
def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(service: str, host: str, port: int) -> None:
    if _answers(host, port):
        return
    message = f"{service} at {host}:{port} is not reachable"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true requires it", pytrace=False)
    pytest.skip(f"{message} (needs {service}; required when CI=true)")


def require_postgres() -> None:
    _require("PostgreSQL", PG_HOST, PG_PORT)


def require_redis() -> str:
    _require("Redis", REDIS_HOST, REDIS_PORT)
    return REDIS_URL


@contextmanager
def fresh_postgres_database(prefix: str = "clipgan_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(name=name)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
