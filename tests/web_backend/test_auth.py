"""Accounts and tokens, including the attacks a token scheme must survive."""

import base64
import json
import time

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from tests.web_backend.helpers import SECRET, Account, make_admin


def test_register_validates_and_refuses_duplicates(client: TestClient) -> None:
    ok = client.post("/v1/users", json={"username": "alice", "email": "Alice@X.io",
                                        "password": "12345678"})
    assert ok.status_code == 201 and ok.json()["email"] == "alice@x.io"
    assert "password" not in ok.text and "hash" not in ok.text
    dup_name = client.post("/v1/users", json={"username": "alice", "email": "other@x.io",
                                              "password": "12345678"})
    assert dup_name.status_code == 409 and "username is already registered" in dup_name.json()["detail"]
    dup_mail = client.post("/v1/users", json={"username": "alice2", "email": "alice@x.io",
                                              "password": "12345678"})
    assert dup_mail.status_code == 409 and "email" in dup_mail.json()["detail"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("password", "Pw7!xq", "at least 8 characters"),
    ("password", "x" * 1025, "at most 1024 characters"),
    ("username", "a b", "should match pattern"),
    ("email", "not-an-email", "should match pattern"),
])
def test_register_bad_input_says_what_to_fix(client: TestClient, field: str, value: str,
                                             message: str) -> None:
    body = {"username": "carol", "email": "carol@x.io", "password": "long enough", field: value}
    r = client.post("/v1/users", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"][-1] == field and message in detail[0]["msg"]
    assert value not in r.text  # the input (maybe a password) is never echoed


def test_sign_in_and_me(client: TestClient, alice: Account) -> None:
    me = alice.get("/v1/users/me")
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert me.json()["limits"]["max_active_jobs"] == 3
    wrong = client.post("/v1/auth/token", data={"username": "alice", "password": "nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    nobody = client.post("/v1/auth/token", data={"username": "ghost", "password": "nope"})
    assert nobody.status_code == 401 and nobody.json() == wrong.json()


def _forge(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _claims(account: Account) -> dict:
    return jwt.decode(account.tokens["access_token"], SECRET, algorithms=["HS256"])


def test_token_attacks_are_refused(client: TestClient, alice: Account) -> None:
    claims = _claims(alice)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
    alg_none = header.decode().rstrip("=") + "." + payload.decode().rstrip("=") + "."
    head, _body, sig = alice.tokens["access_token"].split(".")
    raised = dict(claims, sub="999")
    tampered = head + "." + base64.urlsafe_b64encode(json.dumps(raised).encode()).decode().rstrip("=") + "." + sig
    now = int(time.time())
    attacks = {
        "alg none": alg_none,
        "wrong key": _forge(claims, key="k" * 64),
        "expired": _forge(dict(claims, iat=now - 7200, exp=now - 3600)),
        "tampered payload": tampered,
        "no expiry": _forge({k: v for k, v in claims.items() if k != "exp"}),
        "no subject": _forge({k: v for k, v in claims.items() if k != "sub"}),
        "not an access token": _forge(dict(claims, typ="refresh")),
        "HS512 instead of pinned HS256": _forge(claims, alg="HS512"),
        "garbage": "abc.def.ghi",
    }
    for name, token in attacks.items():
        r = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"] == "Bearer", name
    assert client.get("/v1/users/me").status_code == 401


def test_refresh_rotates_and_reuse_revokes_the_family(client: TestClient, alice: Account) -> None:
    first = alice.tokens
    r = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    # the stolen first token comes back: the whole login is revoked
    reuse = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and "already used" in reuse.json()["detail"]
    assert client.post("/v1/auth/refresh",
                       json={"refresh_token": second["refresh_token"]}).status_code == 401
    gone = client.get("/v1/users/me",
                      headers={"Authorization": f"Bearer {second['access_token']}"})
    assert gone.status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": "made-up"}).status_code == 401


def test_logout_ends_the_session_at_once(alice: Account) -> None:
    assert alice.post("/v1/auth/logout").status_code == 204
    assert alice.get("/v1/users/me").status_code == 401


def test_password_change_signs_out_other_sessions(client: TestClient, alice: Account) -> None:
    laptop = dict(alice.tokens)
    phone = alice.sign_in()
    r = alice.put("/v1/users/me/password",
                  json={"current_password": "correct horse", "new_password": "battery staple"})
    assert r.status_code == 204
    assert alice.get("/v1/users/me").status_code == 200  # the session that changed it
    assert client.get("/v1/users/me", headers={
        "Authorization": f"Bearer {laptop['access_token']}"}).status_code == 401
    assert phone is alice.tokens
    old = client.post("/v1/auth/token", data={"username": "alice", "password": "correct horse"})
    assert old.status_code == 401
    bad = alice.put("/v1/users/me/password",
                    json={"current_password": "wrong", "new_password": "whatever1"})
    assert bad.status_code == 403


def test_disabled_user_is_locked_out_immediately(app, client: TestClient, alice: Account,
                                                  bob: Account) -> None:
    make_admin(app, alice)
    assert bob.get("/v1/users/me").status_code == 200
    assert alice.post(f"/v1/admin/users/{bob.id}/disable").status_code == 200
    assert bob.get("/v1/users/me").status_code == 401
    relogin = client.post("/v1/auth/token", data={"username": "bob", "password": "correct horse"})
    assert relogin.status_code == 403 and "disabled" in relogin.json()["detail"]
    assert alice.post(f"/v1/admin/users/{bob.id}/enable").status_code == 200
    assert bob.sign_in()["access_token"]


def test_login_attempts_are_limited_per_address(client: TestClient, alice: Account) -> None:
    statuses = [client.post("/v1/auth/token", data={"username": "alice", "password": "x"})
                for _ in range(9)]
    assert {r.status_code for r in statuses} == {401}  # alice's own sign-in was attempt 1
    limited = client.post("/v1/auth/token", data={"username": "alice", "password": "x"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "10"
    assert limited.headers["ratelimit-remaining"] == "0"
