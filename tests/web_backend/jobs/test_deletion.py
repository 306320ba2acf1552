"""Deleting pictures and accounts, as their owners and an admin see it, counted in rows
and stored objects before and after: what was only theirs goes, what is shared stays."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.servers import S3Server
from tests.web_backend.helpers import Account, make_admin
from tests.web_backend.jobs.test_jobs import finish, png
from web_backend.app import create_app
from web_backend.core.models import (
    ApiKey,
    AuthSession,
    Blob,
    BlobRef,
    Job,
    RefreshToken,
    User,
    UserUsage,
    WebhookDelivery,
)
from web_backend.core.settings import WebSettings

_COUNTED = {"users": User, "logins": AuthSession, "refresh_tokens": RefreshToken,
            "api_keys": ApiKey, "jobs": Job, "deliveries": WebhookDelivery,
            "usage": UserUsage, "blobs": Blob, "blob_refs": BlobRef}


def counts(app: FastAPI) -> dict[str, int]:
    """Rows per table, and the objects in the store."""
    services = app.state.services
    with services.session_factory() as session:
        found = {name: session.scalar(select(func.count()).select_from(model)) or 0
                 for name, model in _COUNTED.items()}

    async def objects() -> int:
        return len([blob async for blob in services.blobs.store.scan()])

    found["objects"] = asyncio.run(objects())
    return found


def owned_by(app: FastAPI, user_id: int) -> dict[str, int]:
    """Rows that name this user, directly or through their jobs."""
    with app.state.services.session_factory() as session:
        jobs = select(Job.id).where(Job.user_id == user_id).scalar_subquery()
        return {
            "users": session.scalar(select(func.count()).where(User.id == user_id)) or 0,
            "logins": session.scalar(select(func.count()).where(AuthSession.user_id == user_id)),
            "refresh_tokens": session.scalar(select(func.count()).select_from(RefreshToken)
                                             .join(AuthSession).where(
                                                 AuthSession.user_id == user_id)),
            "api_keys": session.scalar(select(func.count()).where(ApiKey.user_id == user_id)),
            "jobs": session.scalar(select(func.count()).where(Job.user_id == user_id)),
            "deliveries": session.scalar(select(func.count()).select_from(WebhookDelivery)
                                         .where(WebhookDelivery.job_id.in_(jobs))),
            "usage": session.scalar(select(func.count()).where(UserUsage.user_id == user_id)),
            "blob_refs": session.scalar(select(func.count()).where(BlobRef.owner.in_(jobs))),
        }


@pytest.fixture(params=["local", "s3"])
def store_app(request: pytest.FixtureRequest, make_settings: Callable[..., WebSettings],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FastAPI, TestClient]]:
    """The app on each store: its own directory, or a fresh bucket of the S3 server."""
    data: dict[str, Any] = {}
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        data["storage_url"] = f"s3://{server.new_bucket()}/clipgan"
    app = create_app(make_settings(data=data))
    with TestClient(app) as client:
        yield app, client


def _submit(account: Account, **fields: Any) -> str:
    r = account.post("/v1/jobs", json={"prompt": "smile", "steps": 4, **fields})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_deleting_a_picture_takes_what_was_only_its_own(store_app) -> None:
    app, client = store_app
    alice, bob = Account(client, "alice"), Account(client, "bob")
    prompt_image = base64.b64encode(png((9, 9, 9), 40)).decode()
    first = _submit(alice, image_prompt=prompt_image)
    second, theirs = _submit(alice), _submit(bob)
    picture = png((200, 30, 90))
    finish(app, first, picture, preview=png((1, 2, 3)))  # its own preview and image prompt
    finish(app, second, picture)                         # the same picture: one blob, shared
    finish(app, theirs, picture)                         # and bob's too
    link = alice.get(f"/v1/jobs/{first}").json()["image_url"]
    preview_link = alice.get(f"/v1/jobs/{first}").json()["preview_url"]
    before = counts(app)
    assert before["objects"] == 3  # the picture, the preview, the image prompt

    r = alice.delete(f"/v1/jobs/{first}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deleted"] is True and body["status"] == "succeeded"
    assert body["image_url"] is None and body["preview_url"] is None
    after = counts(app)
    assert before["jobs"] - after["jobs"] == 1
    assert before["objects"] - after["objects"] == 2  # preview and image prompt; not the picture
    assert before["blobs"] - after["blobs"] == 2
    assert before["blob_refs"] - after["blob_refs"] == 3
    assert alice.get(f"/v1/jobs/{first}").status_code == 404
    for gone in (link, preview_link, f"/v1/jobs/{first}/image"):
        assert alice.get(gone).status_code == 404, gone
    assert alice.delete(f"/v1/jobs/{first}").status_code == 404
    assert client.get(alice.get(f"/v1/jobs/{second}").json()["image_url"]).content == picture
    assert bob.get(f"/v1/jobs/{theirs}/image").content == picture

    assert alice.delete(f"/v1/jobs/{second}").status_code == 200
    assert counts(app)["objects"] == 1  # bob's job still holds the picture
    assert bob.get(f"/v1/jobs/{theirs}/image").content == picture
    assert bob.delete(f"/v1/jobs/{theirs}").status_code == 200
    final = counts(app)
    assert final["objects"] == final["blobs"] == final["blob_refs"] == final["jobs"] == 0


def test_delete_cancels_an_active_job_and_deletes_it_once_ended(app: FastAPI,
                                                                alice: Account) -> None:
    job = _submit(alice)
    cancelled = alice.delete(f"/v1/jobs/{job}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["deleted"] is False
    kept = alice.delete(f"/v1/jobs/{job}", params={"cancel_only": "true"})
    assert kept.status_code == 200 and kept.json()["deleted"] is False
    assert alice.get(f"/v1/jobs/{job}").status_code == 200  # cancel_only never deletes
    assert alice.delete(f"/v1/jobs/{job}").json()["deleted"] is True
    assert alice.get(f"/v1/jobs/{job}").status_code == 404


def test_nobody_deletes_another_users_picture(app: FastAPI, alice: Account,
                                              bob: Account) -> None:
    job = _submit(alice)
    finish(app, job, png())
    assert bob.delete(f"/v1/jobs/{job}").status_code == 404
    assert alice.get(f"/v1/jobs/{job}/image").status_code == 200
    assert counts(app)["objects"] == 1


def _key_for(account: Account) -> str:
    r = account.post("/v1/users/me/api-keys", json={"name": "bot", "scopes": ["jobs:read",
                                                                            "jobs:write"]})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _with_everything(app: FastAPI, account: Account, picture: bytes) -> dict[str, str]:
    """An account with a finished picture, a cancelled job whose webhook is pending, an
    API key, a webhook secret and a second login; returns what a thief would keep."""
    job = _submit(account)
    finish(app, job, picture, preview=png((account.id, 5, 5)))
    assert account.post("/v1/users/me/webhook-secret").status_code == 201
    hooked = _submit(account, webhook_url="http://127.0.0.1:9/clipgan")
    assert account.delete(f"/v1/jobs/{hooked}").json()["status"] == "cancelled"
    key = _key_for(account)
    token, refresh = account.tokens["access_token"], account.tokens["refresh_token"]
    account.sign_in()
    return {"job": job, "key": key, "token": token, "refresh": refresh,
            "link": account.get(f"/v1/jobs/{job}").json()["image_url"]}


def _refused_everywhere(client: TestClient, kept: dict[str, str]) -> None:
    for credential in (kept["token"], kept["key"]):
        r = client.get(f"/v1/jobs/{kept['job']}",
                       headers={"Authorization": f"Bearer {credential}"})
        assert r.status_code == 401, r.text
    assert client.post("/v1/auth/refresh",
                       json={"refresh_token": kept["refresh"]}).status_code == 401
    assert client.get(kept["link"]).status_code in (403, 404)


@pytest.fixture
def hooked_app(make_settings: Callable[..., WebSettings]) -> Iterator[tuple[FastAPI, TestClient]]:
    """Webhooks to this machine allowed; nothing answers them, so deliveries stay pending."""
    app = create_app(make_settings(env="dev", webhooks={
        "allow_networks": ["127.0.0.1/32"], "backoff_s": [600.0]}))
    with TestClient(app) as client:
        yield app, client


def test_deleting_an_account_takes_everything_of_theirs(hooked_app) -> None:
    app, client = hooked_app
    alice, bob = Account(client, "alice"), Account(client, "bob")
    shared = png((10, 200, 10))
    kept = _with_everything(app, alice, shared)
    bobs = _with_everything(app, bob, shared)  # bob's picture is the same blob
    before, bob_before = counts(app), owned_by(app, bob.id)
    alice_before = owned_by(app, alice.id)
    assert all(alice_before.values()), alice_before  # she has one of each

    wrong = alice.delete_account(password="not it")
    assert wrong.status_code == 403 and "password" in wrong.json()["detail"]
    with_key = client.request("DELETE", "/v1/users/me", json={"password": alice.password},
                              headers={"Authorization": f"Bearer {kept['key']}"})
    assert with_key.status_code == 403  # a key never changes the account
    assert counts(app) == before

    assert alice.delete_account().status_code == 204
    after = counts(app)
    assert owned_by(app, alice.id) == dict.fromkeys(alice_before, 0)
    for table in ("users", "logins", "refresh_tokens", "api_keys", "jobs", "deliveries",
                  "usage", "blob_refs"):
        assert before[table] - after[table] == alice_before[table], table
    assert before["objects"] - after["objects"] == 1  # her preview; the picture is bob's too
    assert owned_by(app, bob.id) == bob_before
    _refused_everywhere(client, kept)
    assert alice.get("/v1/users/me").status_code == 401
    assert bob.get(f"/v1/jobs/{bobs['job']}/image").content == shared

    admin = make_admin(app, Account(client, "root"))
    # storage per user: bob's picture and preview (the picture counts once per account)
    stored = len(shared) + len(png((bob.id, 5, 5)))
    assert bob.get("/v1/users/me").json()["storage_bytes"] == stored
    listed = {u["username"]: u for u in admin.get("/v1/admin/users").json()}
    assert listed["bob"]["storage_bytes"] == stored and listed["root"]["storage_bytes"] == 0
    assert admin.delete(f"/v1/admin/users/{bob.id}").status_code == 204
    _refused_everywhere(client, bobs)
    final = counts(app)
    assert final["objects"] == final["blobs"] == final["jobs"] == 0
    assert admin.delete(f"/v1/admin/users/{bob.id}").status_code == 404


def test_account_deletion_refusals(app: FastAPI, client: TestClient) -> None:
    root = make_admin(app, Account(client, "root"))
    assert root.delete(f"/v1/admin/users/{root.id}").status_code == 409  # not this way
    only = root.delete_account()
    assert only.status_code == 409 and "only administrator" in only.json()["detail"]
    alice = Account(client, "alice")
    assert alice.delete(f"/v1/admin/users/{root.id}").status_code == 403
    missing = alice.delete("/v1/users/me")
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body"]
    for _ in range(5):
        alice.delete_account(password="guess")
    limited = alice.delete_account(password=alice.password)
    assert limited.status_code == 429  # guessing is limited, like password changes
    assert alice.get("/v1/users/me").status_code == 200


def test_an_account_deleted_while_its_job_runs_leaves_nothing_behind(
        make_settings: Callable[..., WebSettings], ml_handle) -> None:
    """The dispatcher is storing previews when the account goes: the search stops at its
    next write, and what it stored for the deleted job is let go too."""
    from tests.web_backend.helpers import wait_for
    from web_backend.jobs.ml_client import HandleMLClient

    settings = make_settings(dispatch={"lease_s": 5, "progress_interval_s": 0.05})
    app = create_app(settings, ml_client=HandleMLClient(ml_handle))
    with TestClient(app) as client:
        alice = Account(client, "alice")
        job = _submit(alice, steps=400, preview_every=1)
        wait_for(alice, job, lambda j: j["preview_url"] is not None, timeout=60)
        assert alice.delete_account().status_code == 204
        deadline = time.monotonic() + 30
        while (left := counts(app))["objects"] or left["blobs"] or left["blob_refs"]:
            assert time.monotonic() < deadline, left
            time.sleep(0.2)
        assert left["jobs"] == left["users"] == 0
