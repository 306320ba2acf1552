"""Engine and sessions. One engine per app (made in create_app, never at import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["WRITE_OPTION", "make_engine", "make_session_factory"]

# Sync routes run on FastAPI's threadpool (40 threads); the pool must cover all of them,
# or requests queue for a connection. A wait that still times out answers 503.
POOL = dict(pool_size=10, max_overflow=40, pool_timeout=10)


def make_engine(url: str, *, sqlite_synchronous: str = "normal", **kwargs: Any) -> Engine:
    """``sqlite_synchronous``: SQLite's ``synchronous`` in WAL mode. ``normal``: a commit
    is in the WAL when it returns, so it survives the process being killed; only a power
    cut or an OS crash may lose the last commits. ``full``: each commit is also fsynced."""
    if sqlite_synchronous not in ("normal", "full"):
        raise ValueError("sqlite_synchronous is 'normal' or 'full'")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **POOL, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")   # readers do not block the writer
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A deferred transaction that read, then writes, fails at once (SQLITE_BUSY, no
            # waiting) when another writer committed in between. Sessions that will write
            # start IMMEDIATE instead: writers queue on busy_timeout, readers stay free.
            immediate = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, **POOL, **kwargs)


WRITE_OPTION = "clipgan_writes"


def make_session_factory(engine: Engine, *, writes: bool = False) -> sessionmaker[Session]:
    """``writes=True``: sessions that will change rows (matters on SQLite only)."""
    bind = engine.execution_options(**{WRITE_OPTION: True}) if writes else engine
    return sessionmaker(bind, expire_on_commit=False)


def keep_private(sqlite_url: str) -> None:
    """Create the SQLite file owner-only (0600) before SQLite creates it world-readable;
    tighten an existing one. SQLite gives its -wal and -shm files the same mode."""
    database = make_url(sqlite_url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
