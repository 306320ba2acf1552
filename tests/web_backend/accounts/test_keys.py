"""API keys: a credential for programs that lasts, does only what its scopes allow, and
stops at once (revoked, expired, its account disabled) on every web process."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from tests.web_backend.helpers import SQLITE_ONLY, Account, make_admin
from web_backend.accounts.keys import KEY_LENGTH, new_key, parse_key
from web_backend.app import create_app
from web_backend.core.errors import Unauthorized
from web_backend.core.models import ApiKey
from web_backend.core.settings import WebSettings

KEY_SHAPE = re.compile(r"^cgk_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$")


def _key(account: Account, **body: Any) -> dict[str, Any]:
    r = account.post("/v1/users/me/api-keys", json={"name": "bot", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_key_format_names_itself_and_checks_itself() -> None:
    key, key_id = new_key()
    assert KEY_SHAPE.match(key) and len(key) == KEY_LENGTH and parse_key(key) == key_id
    assert len({new_key()[0] for _ in range(1000)}) == 1000
    for typo in (key[:-1] + ("A" if key[-1] != "A" else "B"),          # a wrong character
                 key[:20] + key[21] + key[20] + key[22:],                # two swapped
                 key[:-1], key + "x", key.replace("cgk_", "cgx_"), "cgk_" + "0" * 51):
        with pytest.raises(Unauthorized, match="malformed"):
            parse_key(typo)


@SQLITE_ONLY
def test_a_key_is_shown_once_and_listed_without_its_secret(client: TestClient,
                                                           alice: Account) -> None:
    made = _key(alice, scopes=["jobs:read"], expires_in_days=30)
    assert KEY_SHAPE.match(made["key"]) and made["prefix"] == f"cgk_{made['id']}"
    assert made["scopes"] == ["jobs:read"] and made["expires_at"] is not None
    (listed,) = alice.get("/v1/users/me/api-keys").json()
    assert "key" not in listed and made["key"] not in str(listed)
    assert listed["id"] == made["id"] and listed["last_used_at"] is None
    with client.app.state.services.session_factory() as session:
        stored = session.get(ApiKey, made["id"])
        assert stored is not None and made["key"] not in str(vars(stored))  # a hash only


def test_a_key_works_wherever_its_scopes_allow(client: TestClient, alice: Account) -> None:
    key = _as(_key(alice)["key"])
    job = client.post("/v1/jobs", json={"prompt": "smile"}, headers=key)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=key).json()["id"] == job_id
    assert [j["id"] for j in client.get("/v1/jobs", headers=key).json()["items"]] == [job_id]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=key) as stream:
        assert stream.status_code == 200
        assert next(stream.iter_lines()).startswith("id: ")
    assert client.delete(f"/v1/jobs/{job_id}", headers=key).json()["status"] == "cancelled"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/users/me"), ("PUT", "/v1/users/me/password"),
    ("POST", "/v1/users/me/webhook-secret"), ("POST", "/v1/users/me/api-keys"),
    ("GET", "/v1/users/me/api-keys"), ("DELETE", "/v1/users/me/api-keys/x"),
    ("GET", "/v1/admin/users"), ("POST", "/v1/auth/logout"),
])
@SQLITE_ONLY
def test_a_key_never_changes_an_account(client: TestClient, app: Any, alice: Account,
                                        method: str, path: str) -> None:
    make_admin(app, alice)
    key = _as(_key(alice)["key"])
    r = client.request(method, path, headers=key, json={"current_password": "correct horse",
                                                        "new_password": "another one"})
    assert r.status_code == 403 and "password" in r.json()["detail"], (path, r.text)


@SQLITE_ONLY
def test_a_read_only_key_cannot_submit(client: TestClient, alice: Account) -> None:
    key = _as(_key(alice, scopes=["jobs:read"])["key"])
    refused = client.post("/v1/jobs", json={"prompt": "smile"}, headers=key)
    assert refused.status_code == 403 and "jobs:write" in refused.json()["detail"]
    assert client.get("/v1/jobs", headers=key).status_code == 200


@SQLITE_ONLY
def test_a_mistyped_key_is_refused_without_a_database_read(client: TestClient,
                                                          alice: Account) -> None:
    key = _key(alice)["key"]
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    seen: list[str] = []
    engine = client.app.state.services.engine
    listener = lambda *args: seen.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        refused = client.get("/v1/jobs", headers=_as(typo))
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert refused.status_code == 401 and "malformed" in refused.json()["detail"]
    assert not [s for s in seen if "api_keys" in s], seen


def test_an_expired_or_revoked_key_or_a_disabled_account_stops_it(
        client: TestClient, app: Any, alice: Account, bob: Account) -> None:
    expiring, revoked, owners = (_key(alice, expires_in_days=1), _key(alice), _key(alice))
    for made in (expiring, revoked, owners):
        assert client.get("/v1/jobs", headers=_as(made["key"])).status_code == 200
    with app.state.services.write_session_factory() as session:
        session.execute(update(ApiKey).where(ApiKey.id == expiring["id"]).values(
            expires_at=ApiKey.created_at))
        session.commit()
    app.state.services.key_checks._checked.clear()  # as another process would see it
    assert client.get("/v1/jobs", headers=_as(expiring["key"])).status_code == 401
    assert alice.delete(f"/v1/users/me/api-keys/{revoked['id']}").status_code == 204
    gone = client.get("/v1/jobs", headers=_as(revoked["key"]))
    assert gone.status_code == 401 and "revoked" in gone.json()["detail"]
    assert alice.delete(f"/v1/users/me/api-keys/{revoked['id']}").status_code == 404
    admin = make_admin(app, bob)
    assert admin.post(f"/v1/admin/users/{alice.id}/disable").status_code == 200
    assert client.get("/v1/jobs", headers=_as(owners["key"])).status_code == 401


@SQLITE_ONLY
def test_last_use_is_written_at_most_once_a_minute(client: TestClient, app: Any,
                                                   alice: Account) -> None:
    made = _key(alice)
    key = _as(made["key"])
    writes: list[str] = []
    listener = lambda *args: writes.append(args[2]) if args[2].startswith(  # noqa: E731
        "UPDATE api_keys") else None
    engine = app.state.services.engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for _ in range(30):
            assert client.get("/v1/jobs", headers=key).status_code == 200
        assert writes == []  # no write per request
        assert app.state.services.key_usage.flush() == 1  # the minute's one write
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(writes) == 1
    (listed,) = alice.get("/v1/users/me/api-keys").json()
    assert listed["last_used_at"] is not None


@SQLITE_ONLY
def test_a_key_may_have_its_own_limit_within_the_accounts(app: Any, client: TestClient,
                                                         alice: Account) -> None:
    make_admin(app, alice).put(f"/v1/admin/users/{alice.id}/limits",
                               json={"max_active_jobs": 50})
    key = _as(_key(alice, rate_per_minute=2)["key"])
    statuses = [client.post("/v1/jobs", json={"prompt": "s"}, headers=key).status_code
                for _ in range(3)]
    assert statuses == [202, 202, 429]
    assert alice.post("/v1/jobs", json={"prompt": "s"}).status_code == 202  # the account's


@SQLITE_ONLY
def test_an_administrator_sees_how_many_keys_an_account_has(app: Any, alice: Account,
                                                            bob: Account) -> None:
    _key(bob)
    _key(bob)
    listed = make_admin(app, alice).get("/v1/admin/users").json()
    assert {u["username"]: u["api_keys"] for u in listed} == {"alice": 0, "bob": 2}
    assert bob.get("/v1/users/me").json()["api_keys"] == 2


@SQLITE_ONLY
def test_streams_opened_with_a_key_outlive_access_tokens(
        make_settings: Callable[..., WebSettings]) -> None:
    """A key is not an access token: its stream is not cut when a token would expire."""
    with TestClient(create_app(make_settings(auth={"access_token_ttl_s": 1}))) as client:
        alice = Account(client, "alice")
        key = _as(_key(alice)["key"])
        job_id = client.post("/v1/jobs", json={"prompt": "smile"}, headers=key).json()["id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=key) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id: ")
            token = client.stream("GET", f"/v1/jobs/{job_id}/events", headers=alice.auth)
            with token as by_token:  # the token's stream ends with the token (1 s)
                assert [line for line in by_token.iter_lines() if line.startswith("event")] \
                    == ["event: status"]
            time.sleep(1.1)  # every access token of this login has expired by now
            client.delete(f"/v1/jobs/{job_id}", headers=key)
            rest = list(lines)  # the key's stream was still there, and saw the cancel
            assert "event: status" in rest and "event: done" in rest
