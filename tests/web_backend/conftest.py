"""Web backend fixtures: every test runs against SQLite and against real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.infra import fresh_postgres_database, require_redis
from tests.web_backend.helpers import SECRET, Account
from web_backend.app import create_app
from web_backend.core import migrate
from web_backend.core.settings import WebSettings


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, migrated database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clipgan.db'}"
        migrate.upgrade(url)
        yield url
        return
    with fresh_postgres_database() as url:
        migrate.upgrade(url)
        yield url


FEEDS = ["poll", "postgres", "redis"]  # how a web process hears of changes


@pytest.fixture(params=FEEDS)
def feed_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WebSettings]:
    """Settings for one feed: SQLite alone polls; Redis is tried with SQLite (it needs no
    database notifications). Sign-in and submission limits are lifted: with Redis they are
    counted in the machine's shared Redis, across tests and runs (and every test's first
    user has id 1)."""
    kind = request.param
    data: dict[str, Any] = {"dir": tmp_path}
    common: dict[str, Any] = dict(env="prod", secret_key=SECRET, feed={"kind": kind}, auth={
        "registrations_per_hour": 100_000, "login_attempts_per_minute": 100_000,
        "password_changes_per_hour": 100_000, "failed_sign_ins_per_hour": 100_000},
        limits={"submissions_per_minute": 100_000})
    if kind == "postgres":
        with fresh_postgres_database() as url:
            migrate.upgrade(url)
            yield WebSettings(data={**data, "database_url": url}, **common)
        return
    url = f"sqlite:///{tmp_path / 'clipgan.db'}"
    migrate.upgrade(url)
    if kind == "redis":
        data["redis_url"] = require_redis()
    yield WebSettings(data={**data, "database_url": url}, **common)


@pytest.fixture
def redis_url() -> str:
    """The local Redis (skipped without one, unless CI=true)."""
    return require_redis()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., WebSettings]:
    def build(**overrides: Any) -> WebSettings:
        """``overrides``: top-level fields, or a dict per group (``dispatch={...}``)."""
        values: dict[str, Any] = dict(env="prod", secret_key=SECRET, data={
            "dir": tmp_path, "database_url": database_url})
        for name, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(name), dict):
                values[name] = {**values[name], **value}
            else:
                values[name] = value
        return WebSettings(**values)

    return build


@pytest.fixture
def app(make_settings: Callable[..., WebSettings]) -> FastAPI:
    return create_app(make_settings())


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def alice(client: TestClient) -> Account:
    return Account(client, "alice")


@pytest.fixture
def bob(client: TestClient) -> Account:
    return Account(client, "bob")
