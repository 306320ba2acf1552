"""Webhooks: a job's end reaches the URL it named, signed, at least once, and only
public addresses are ever called. Jobs end the way a dispatcher ends them (the queue's
transitions, from another process's services); a real HTTP receiver verifies them with
the ``standardwebhooks`` package, as a user's would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from tests.web_backend.helpers import Account, WebhookReceiver
from web_backend.app import build_services, create_app, make_webhook_sender
from web_backend.core.models import JobStatus
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.services import Services

FAST = {"allow_networks": ["127.0.0.1/32"], "poll_s": 0.05, "backoff_s": [0.1, 0.1]}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture
def app(make_settings: Callable[..., WebSettings]) -> FastAPI:
    """Dev (http allowed), and the test receiver's loopback network allowed."""
    return create_app(make_settings(env="dev", webhooks=FAST))


@pytest.fixture
def elsewhere(app: FastAPI) -> Iterator[Services]:
    """A dispatcher's services in another process."""
    services = build_services(app.state.services.settings)
    yield services
    services.engine.dispose()


def _secret(account: Account) -> str:
    r = account.post("/v1/users/me/webhook-secret")
    assert r.status_code == 201, r.text
    return r.json()["secret"]


def _submit(account: Account, url: str, **extra: Any) -> dict[str, Any]:
    r = account.post("/v1/jobs", json={"prompt": "smile", "steps": 2, "webhook_url": url,
                                       **extra})
    assert r.status_code == 202, r.text
    return r.json()


def _end(services: Services, status: JobStatus) -> str:
    """Claim the next job and end it in ``status``, as a dispatcher would."""
    with services.write_session_factory() as session:
        claim = queue.claim(session, owner="elsewhere", lease_s=60)
    assert claim is not None
    extra: dict[str, Any] = {}
    if status is JobStatus.succeeded:
        extra = dict(result_key=services.storage.put(b"\x89PNG picture"), seed=7, score=0.3,
                     timings={"total_s": 1.0}, steps=2)
    elif status is JobStatus.failed:
        extra = dict(error="the model is unknown")
    with services.write_session_factory() as session:
        queue.finish(session, claim, status=status, **extra)
    return claim.job_id


def _job(account: Account, job_id: str, until: Callable[[dict[str, Any]], bool],
         timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = account.get(f"/v1/jobs/{job_id}").json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_a_finished_job_calls_its_webhook_signed_with_the_users_secret(
        client: TestClient, alice: Account, elsewhere: Services,
        receiver: WebhookReceiver) -> None:
    secret = _secret(alice)
    assert secret.startswith("whsec_")
    job = _submit(alice, receiver.url)
    assert job["webhook"] == {"url": receiver.url, "deliveries": [],
                              "events": ["completed", "failed", "cancelled"]}
    _end(elsewhere, JobStatus.succeeded)

    (headers, body), = receiver.wait_for(1)
    payload = Webhook(secret).verify(body, headers)  # raises unless signed by that secret
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    # the signed image link in it works for the receiver, signed out
    image = client.get(payload["data"]["image_url"])
    assert image.status_code == 200 and image.content == b"\x89PNG picture"
    with pytest.raises(Exception, match="signature"):
        Webhook(_secret(alice)).verify(body, headers)  # another secret: refused

    shown = _job(alice, job["id"], lambda j: j["webhook"]["deliveries"][0]["status"]
                 == "delivered")["webhook"]["deliveries"]
    assert [(d["id"], d["event"], d["status"], d["attempts"]) for d in shown] == \
        [(headers["webhook-id"], "completed", "delivered", 1)]


def test_a_refusing_receiver_is_retried_then_the_failure_shows_in_the_job(
        alice: Account, elsewhere: Services) -> None:
    receiver = WebhookReceiver(answers=(500,))
    try:
        _secret(alice)
        job = _submit(alice, receiver.url)
        _end(elsewhere, JobStatus.failed)
        calls = receiver.wait_for(3)  # the first try and the two retries of FAST
        shown = _job(alice, job["id"], lambda j: j["webhook"]["deliveries"][0]["status"]
                     == "failed")["webhook"]["deliveries"]
    finally:
        receiver.close()
    assert len(calls) == 3 and len({h["webhook-id"] for h, _ in calls}) == 1  # one message
    assert json.loads(calls[0][1])["type"] == "job.failed"
    assert shown[0]["status"] == "failed" and shown[0]["attempts"] == 3
    assert shown[0]["last_error"] == "the receiver answered 500"


def test_a_receiver_that_recovers_gets_the_message(alice: Account, elsewhere: Services) -> None:
    receiver = WebhookReceiver(answers=(503, 200))
    try:
        _secret(alice)
        job = _submit(alice, receiver.url)
        _end(elsewhere, JobStatus.succeeded)
        receiver.wait_for(2)
        shown = _job(alice, job["id"], lambda j: j["webhook"]["deliveries"][0]["status"]
                     == "delivered")["webhook"]["deliveries"]
    finally:
        receiver.close()
    assert shown[0]["status"] == "delivered" and shown[0]["attempts"] == 2


def test_only_the_chosen_endings_are_announced(alice: Account, elsewhere: Services,
                                               receiver: WebhookReceiver) -> None:
    _secret(alice)
    cancelled = _submit(alice, receiver.url, webhook_events=["completed"])
    assert alice.delete(f"/v1/jobs/{cancelled['id']}").status_code == 200
    completed = _submit(alice, receiver.url, webhook_events=["completed"])
    _end(elsewhere, JobStatus.succeeded)
    (_, body), = receiver.wait_for(1)
    time.sleep(0.3)
    assert len(receiver.calls) == 1 and json.loads(body)["data"]["id"] == completed["id"]
    assert alice.get(f"/v1/jobs/{cancelled['id']}").json()["webhook"]["deliveries"] == []


def test_a_webhook_needs_a_secret_first(alice: Account, receiver: WebhookReceiver) -> None:
    r = alice.post("/v1/jobs", json={"prompt": "smile", "webhook_url": receiver.url})
    assert r.status_code == 409 and "POST /v1/users/me/webhook-secret" in r.json()["detail"]
    assert alice.get("/v1/jobs").json()["items"] == []


def test_an_idempotent_retry_with_another_webhook_is_a_conflict(
        alice: Account, receiver: WebhookReceiver) -> None:
    _secret(alice)
    key = {"Idempotency-Key": "k1"}
    body = {"prompt": "smile", "webhook_url": receiver.url}
    assert alice.post("/v1/jobs", json=body, headers=key).status_code == 202
    assert alice.post("/v1/jobs", json=body, headers=key).status_code == 202
    other = alice.post("/v1/jobs", json={**body, "webhook_url": receiver.url + "/other"},
                       headers=key)
    assert other.status_code == 409


# --- SSRF: what may be called --------------------------------------------------------

INTERNAL = [
    "http://127.0.0.1/hook",                       # loopback
    "http://127.8.9.10:8080/hook",                 # all of 127/8
    "http://localhost:6379/",                      # a name resolving to loopback
    "https://10.0.0.5/hook",                       # private
    "https://172.16.3.4/hook",
    "https://192.168.1.1/admin",
    "http://169.254.169.254/latest/meta-data/",    # link-local: cloud metadata
    "http://100.64.0.1/",                          # carrier-grade NAT
    "http://0.0.0.0:8000/",                        # unspecified (reaches this host)
    "http://[::1]/hook",                           # IPv6 loopback
    "http://[::ffff:127.0.0.1]/hook",              # IPv4-mapped loopback
    "http://[fd00::1]/hook",                       # IPv6 unique local
    "http://[fe80::1]/hook",                       # IPv6 link-local
    "http://2130706433/hook",                      # 127.0.0.1 as one decimal number
    "http://0x7f.1/hook",                          # and in hexadecimal shorthand
]


@pytest.fixture
def strict_client(make_settings: Callable[..., WebSettings]) -> Iterator[TestClient]:
    """Dev (so http itself is not the reason), no network allowed beyond public ones."""
    with TestClient(create_app(make_settings(env="dev"))) as c:
        yield c


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused_at_submission(strict_client: TestClient,
                                                      url: str) -> None:
    carol = Account(strict_client, "carol")
    _secret(carol)
    r = carol.post("/v1/jobs", json={"prompt": "smile", "webhook_url": url})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "webhook_url"] and error["type"] == "webhook_url_refused"
    assert "only to public addresses" in error["msg"] or "does not resolve" in error["msg"]
    assert carol.get("/v1/jobs").json()["items"] == []  # nothing queued


@pytest.mark.parametrize(("url", "says"), [
    ("http://example.com/hook", "must start with https://"),
    ("ftp://example.com/hook", "must start with https://"),
    ("https://user:pw@example.com/hook", "user name or password"),
    ("https:///hook", "has no host"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
    ("https://example.com:99999/hook", "not a valid URL"),
])
def test_malformed_or_plain_http_urls_are_refused_outside_dev(alice: Account, url: str,
                                                              says: str) -> None:
    client = TestClient(create_app(alice.client.app.state.services.settings.model_copy(
        update={"env": "prod"})))
    with client:
        dave = Account(client, "dave")
        _secret(dave)
        r = dave.post("/v1/jobs", json={"prompt": "smile", "webhook_url": url})
    assert r.status_code == 422 and says in r.json()["detail"][0]["msg"], r.text


def test_the_address_is_checked_again_at_delivery(
        make_settings: Callable[..., WebSettings], alice: Account, elsewhere: Services,
        receiver: WebhookReceiver) -> None:
    """A name may resolve elsewhere by the time the job ends (DNS rebinding): stand-in,
    a URL accepted under one policy is delivered by a sender whose policy refuses it."""
    _secret(alice)
    job = _submit(alice, receiver.url)
    alice.client.app.state.webhook_sender.stop()  # this process's sender would send it
    time.sleep(0.2)
    _end(elsewhere, JobStatus.succeeded)
    strict = build_services(make_settings(env="dev", webhooks={**FAST, "allow_networks": []}))

    async def run_for(seconds: float) -> None:
        sender = make_webhook_sender(strict)
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(seconds)
        sender.stop()
        await task

    try:
        asyncio.run(run_for(1.0))
    finally:
        strict.engine.dispose()
    (delivery,) = alice.get(f"/v1/jobs/{job['id']}").json()["webhook"]["deliveries"]
    assert receiver.calls == []
    assert delivery["status"] == "failed" and delivery["attempts"] == 3
    assert "resolves to 127.0.0.1, a loopback address" in delivery["last_error"]


def test_a_job_ended_while_no_sender_runs_is_announced_by_the_next(
        make_settings: Callable[..., WebSettings], receiver: WebhookReceiver) -> None:
    """The outbox row is committed with the job's end: whoever starts next sends it."""
    settings = make_settings(env="dev", webhooks={**FAST, "enabled": False})
    with TestClient(create_app(settings)) as client:
        erin = Account(client, "erin")
        secret = _secret(erin)
        job = _submit(erin, receiver.url)
        services = client.app.state.services
        _end(services, JobStatus.succeeded)
        time.sleep(0.3)
        assert receiver.calls == []
        assert erin.get(f"/v1/jobs/{job['id']}").json()["webhook"]["deliveries"][0][
            "status"] == "pending"
    with TestClient(create_app(settings.model_copy(update={"webhooks": settings.webhooks
                                                   .model_copy(update={"enabled": True})}))):
        (headers, body), = receiver.wait_for(1)
    assert Webhook(secret).verify(body, headers)["data"]["id"] == job["id"]
