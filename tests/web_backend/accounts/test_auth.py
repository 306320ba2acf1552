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
    ("email", "not-an-email", "must have an @-sign"),
    ("email", "carol@localhost", "It should have a period"),
    ("email", "carol@exa mple.com", "invalid characters: SPACE"),
    ("email", "car\u0007ol@example.com", "invalid characters before the @-sign: U+0007"),
    ("username", "carol\n", "should match pattern"),
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


def test_usernames_are_one_name_whatever_the_case(client: TestClient, alice: Account) -> None:
    clash = client.post("/v1/users", json={"username": "ALICE", "email": "other@x.io",
                                           "password": "12345678"})
    assert clash.status_code == 409 and "username is already registered" in clash.text
    by_other_case = client.post("/v1/auth/token", data={"username": "Alice",
                                                        "password": alice.password})
    assert by_other_case.status_code == 200


def _sign_in_from(client: TestClient, address: str, username: str, password: str) -> int:
    return client.post("/v1/auth/token", data={"username": username, "password": password},
                       headers={"X-Forwarded-For": address}).status_code


def test_failed_sign_ins_are_limited_per_account_from_any_address(make_settings) -> None:
    from web_backend.app import create_app

    settings = make_settings(auth={"failed_sign_ins_per_hour": 3},
                             http={"forwarded_allow_ips": ["testclient"]})
    with TestClient(create_app(settings)) as client:
        alice, bob = Account(client, "alice"), Account(client, "bob")
        guesses = [_sign_in_from(client, f"203.0.113.{i}", "alice", "guess") for i in range(3)]
        assert guesses == [401, 401, 401]
        # the right password from yet another address waits too: the account is the target
        assert _sign_in_from(client, "198.51.100.7", "ALICE", alice.password) == 429
        assert _sign_in_from(client, "198.51.100.7", "bob", bob.password) == 200
        # and a name that does not exist behaves the same (no probing for accounts)
        ghosts = [_sign_in_from(client, f"192.0.2.{i}", "ghost", "x") for i in range(4)]
        assert ghosts == [401, 401, 401, 429]


def test_forwarded_for_is_believed_only_from_trusted_proxies(make_settings) -> None:
    from web_backend.app import create_app

    for trusted, expected in (([], 429), (["testclient"], 401)):
        settings = make_settings(auth={"login_attempts_per_minute": 3},
                                 http={"forwarded_allow_ips": trusted})
        with TestClient(create_app(settings)) as client:
            codes = [_sign_in_from(client, f"203.0.113.{i}", f"user{i}", "x") for i in range(4)]
        # untrusted: rotating the header changes nothing, the 4th attempt is refused
        assert codes == [401, 401, 401, expected], trusted


def test_password_change_attempts_are_limited(make_settings) -> None:
    from web_backend.app import create_app

    with TestClient(create_app(make_settings(auth={"password_changes_per_hour": 3}))) as client:
        alice = Account(client, "alice")

        def change(current: str) -> int:
            return alice.put("/v1/users/me/password", json={
                "current_password": current, "new_password": "a new long one"}).status_code

        assert [change(f"guess{i}") for i in range(3)] == [403, 403, 403]
        assert change(alice.password) == 429


@pytest.mark.parametrize("value", ["smile\x00", "smile\x1b[31m", "\x7fsmile", "ok\u0085"])
def test_control_characters_are_refused_in_prompts_and_seeds(alice: Account, value: str) -> None:
    for field in ("prompt", "negative_prompt", "seed"):
        refused = alice.post("/v1/jobs", json={"prompt": "a girl", field: value})
        assert refused.status_code == 422, (field, refused.text)
        assert "control character" in refused.text
    assert alice.get("/v1/jobs").json()["items"] == []


def test_line_breaks_in_prompts_become_spaces(alice: Account) -> None:
    job = alice.post("/v1/jobs", json={"prompt": "blue hair,\r\nsmile\ttoo"}).json()
    assert job["request"]["prompt"] == "blue hair, smile too"


def test_the_prompt_part_limit_counts_every_part(alice: Account) -> None:
    for body in ({"prompt": " | ".join(f"part {i}" for i in range(9))},
                 {"prompt": "a | b | c | d | e", "negative_prompt": "f | g | h | i"},
                 {"prompts": [{"text": f"p{i}"} for i in range(5)],
                  "negative_prompt": "x | y | z | w"}):
        refused = alice.post("/v1/jobs", json=body)
        assert refused.status_code == 422 and "at most 8 prompt parts in all" in refused.text
