"""Web backend fixtures: every test runs against SQLite and against real PostgreSQL."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from web_backend import migrate
from web_backend.app import create_app
from web_backend.settings import WebSettings

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
SECRET = secrets.token_hex(32)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, migrated database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clipgan.db'}"
        migrate.upgrade(url)
        yield url
        return
    name = f"clipgan_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.format(name=name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., WebSettings]:
    def build(**overrides: Any) -> WebSettings:
        values: dict[str, Any] = dict(env="prod", secret_key=SECRET, data_dir=tmp_path,
                                      database_url=database_url)
        values.update(overrides)
        return WebSettings(**values)

    return build


@pytest.fixture
def app(make_settings: Callable[..., WebSettings]) -> FastAPI:
    return create_app(make_settings())


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


class Account:
    """A registered, signed-in user, as a test sees one."""

    def __init__(self, client: TestClient, username: str, password: str = "correct horse") -> None:
        self.client = client
        self.username = username
        self.password = password
        r = client.post("/v1/users", json={"username": username, "email": f"{username}@x.io",
                                           "password": password})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        self.sign_in()

    def sign_in(self) -> dict[str, Any]:
        r = self.client.post("/v1/auth/token",
                             data={"username": self.username, "password": self.password})
        assert r.status_code == 200, r.text
        self.tokens = r.json()
        return self.tokens

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    def get(self, path: str, **kw: Any):
        return self.client.get(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw: Any):
        return self.client.post(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def put(self, path: str, **kw: Any):
        return self.client.put(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def delete(self, path: str, **kw: Any):
        return self.client.delete(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)


@pytest.fixture
def alice(client: TestClient) -> Account:
    return Account(client, "alice")


@pytest.fixture
def bob(client: TestClient) -> Account:
    return Account(client, "bob")


def wait_for(account: Account, job_id: str, predicate: Callable[[dict], bool],
             timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = account.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job never reached the state: {job}")


def make_admin(app: FastAPI, account: Account) -> Account:
    from web_backend.models import User

    with app.state.services.session_factory() as session:
        session.get(User, account.id).is_admin = True
        session.commit()
    return account
