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

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from tests.web_backend.helpers import (
    SQLITE_ONLY,
    Account,
    TricklingReceiver,
    WebhookReceiver,
    make_admin,
    stored,
)
from web_backend.app import build_services, create_app, make_webhook_sender
from web_backend.core.models import JobStatus, WebhookDelivery
from web_backend.core.settings import WebSettings
from web_backend.jobs import queue
from web_backend.services import Services
from web_backend.webhooks import outbox

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
        extra = dict(result_key=stored(services, claim.job_id, b"\x89PNG picture"), seed=7, score=0.3,
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
    "http://[::127.0.0.1]/hook",                   # IPv4-compatible
    "http://[::ffff:0:127.0.0.1]/hook",            # IPv4-translated
    "http://[64:ff9b::127.0.0.1]/hook",            # NAT64: the translator's 127.0.0.1
    "http://[2002:7f00:1::]/hook",                 # 6to4 of 127.0.0.1
    "http://192.0.0.8/hook",                       # IETF protocol assignments
    "http://example.com:0/hook",                   # port 0
]



@pytest.fixture
def strict_client(make_settings: Callable[..., WebSettings]) -> Iterator[TestClient]:
    """Dev (so http itself is not the reason), no network allowed beyond public ones."""
    with TestClient(create_app(make_settings(env="dev",
                                             limits={"submissions_per_minute": 1000}))) as c:
        yield c


@SQLITE_ONLY  # the policy is the same on every database
def test_internal_addresses_are_refused_at_submission(strict_client: TestClient) -> None:
    carol = Account(strict_client, "carol")
    _secret(carol)
    for url in INTERNAL:
        r = carol.post("/v1/jobs", json={"prompt": "smile", "webhook_url": url})
        assert r.status_code == 422, (url, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "webhook_url"] and error["type"] == "webhook_url_refused"
        assert "only to public addresses" in error["msg"] or "port 0" in error["msg"], url
        assert "127.0.0.1" not in error["msg"] and "loopback" not in error["msg"]  # no oracle
    assert carol.get("/v1/jobs").json()["items"] == []  # nothing queued


MALFORMED = [
    ("http://example.com/hook", "must start with https://"),
    ("ftp://example.com/hook", "must start with https://"),
    ("https://user:pw@example.com/hook", "user name or password"),
    ("https:///hook", "has no host"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
    ("https://example.com:99999/hook", "not a valid URL"),
    ("https://example.com\r/hook", "printable ASCII"),   # urlsplit drops it, httpx refuses
    ("https://example.com/\u2028", "printable ASCII"),
]


@SQLITE_ONLY
def test_malformed_or_plain_http_urls_are_refused_outside_dev(alice: Account) -> None:
    settings = alice.client.app.state.services.settings
    client = TestClient(create_app(settings.model_copy(update={
        "env": "prod", "limits": settings.limits.model_copy(
            update={"submissions_per_minute": 1000})})))
    with client:
        dave = Account(client, "dave")
        _secret(dave)
        for url, says in MALFORMED:
            r = dave.post("/v1/jobs", json={"prompt": "smile", "webhook_url": url})
            assert r.status_code == 422 and says in r.json()["detail"][0]["msg"], (url, r.text)
        assert dave.get("/v1/jobs").json()["items"] == []


def test_a_submission_is_authenticated_and_counted_before_its_name_is_looked_up(
        make_settings: Callable[..., WebSettings]) -> None:
    """A lookup costs a thread for as long as the name's DNS takes: nobody gets one
    without a valid token, nor beyond the account's submissions per minute."""
    resolved: list[str] = []

    def lookup(host: str, port: int, **_: object) -> list[tuple]:
        resolved.append(host)
        return [(2, 1, 6, "", ("93.184.216.34", port))]

    app = create_app(make_settings(env="dev", limits={"submissions_per_minute": 2}))
    app.state.services.resolver.lookup = lookup
    with TestClient(app) as client:
        erin = Account(client, "erin")
        _secret(erin)
        body = {"prompt": "smile", "webhook_url": "https://hooks.example/x"}
        anonymous = client.post("/v1/jobs", json=body,
                                headers={"Authorization": "Bearer not-a-token"})
        assert anonymous.status_code == 401 and resolved == []
        assert [erin.post("/v1/jobs", json=body).status_code for _ in range(3)] == \
            [202, 202, 429]
    assert resolved == ["hooks.example", "hooks.example"]


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
    assert "only to public addresses" in delivery["last_error"]


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


# --- one attempt, one deadline; every attempt settled; fair to every account ---------

@SQLITE_ONLY
def test_a_receiver_that_trickles_its_answer_is_cut_at_the_deadline(
        make_settings: Callable[..., WebSettings]) -> None:
    """Each byte arrives well within any per-read timeout; the whole answer never does."""
    slow = TricklingReceiver(interval_s=0.3)
    app = create_app(make_settings(env="dev", webhooks={**FAST, "timeout_s": 1}))
    try:
        with TestClient(app) as client:
            frank = Account(client, "frank")
            _secret(frank)
            job = _submit(frank, slow.url)
            _end(build_services(app.state.services.settings), JobStatus.succeeded)
            shown = _job(frank, job["id"], lambda j: j["webhook"]["deliveries"][0]["status"]
                         == "failed", timeout=60)["webhook"]["deliveries"][0]
            deadline = time.monotonic() + 10  # the receiver notices at its next byte
            while len(slow.hung_up) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        slow.close()
    assert shown["status"] == "failed" and shown["attempts"] == 3
    assert shown["last_error"] == "no whole answer within 1 s"
    # the answer would have taken 10,000 x 0.3 s: each call was hung up long before
    assert len(slow.connected) == 3 and len(slow.hung_up) == 3
    assert max(end - start for start, end in zip(slow.connected, slow.hung_up)) < 30


@SQLITE_ONLY
def test_one_accounts_slow_receivers_do_not_hold_every_delivery_slot(
        make_settings: Callable[..., WebSettings], receiver: WebhookReceiver) -> None:
    """Sixteen jobs of one account whose receiver never finishes answering, then one job
    of another account: its webhook arrives while the slow ones are still being tried,
    and the slow account never has more than its share in flight."""
    slow = TricklingReceiver(interval_s=0.3)
    settings = make_settings(env="dev", webhooks={**FAST, "timeout_s": 3, "backoff_s": [60]},
                             limits={"max_active_jobs": 100, "submissions_per_minute": 100})
    app = create_app(settings)
    dispatcher = build_services(settings)
    try:
        with TestClient(app) as client:
            mallory, grace = Account(client, "mallory"), Account(client, "grace")
            _secret(mallory)
            _secret(grace)
            for _ in range(16):
                _submit(mallory, slow.url)
                _end(dispatcher, JobStatus.cancelled)
            job = _submit(grace, receiver.url)
            _end(dispatcher, JobStatus.succeeded)
            receiver.wait_for(1, timeout=30)
            arrived = time.monotonic()
            _job(grace, job["id"], lambda j: j["webhook"]["deliveries"][0]["status"]
                 == "delivered")
            deadline = time.monotonic() + 60
            while len(slow.hung_up) < 16 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        slow.close()
        dispatcher.engine.dispose()
    assert len(slow.hung_up) == 16
    assert arrived < max(slow.hung_up)  # not behind the slow account's queue
    events = sorted([(t, 1) for t in slow.connected] + [(t, -1) for t in slow.hung_up])
    open_calls = peak = 0
    for _, step in events:
        open_calls += step
        peak = max(peak, open_calls)
    assert peak <= 4  # the per-account share (of 16 slots)


class Exploding(httpx.AsyncBaseTransport):
    """An HTTP client part that fails in a way no ``httpx.HTTPError`` covers."""

    calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        Exploding.calls += 1
        raise ValueError("something nobody planned for")


@SQLITE_ONLY
def test_every_attempt_is_settled_whatever_the_error(
        make_settings: Callable[..., WebSettings], receiver: WebhookReceiver) -> None:
    settings = make_settings(env="dev", webhooks={**FAST, "enabled": False})
    with TestClient(create_app(settings)) as client:
        heidi = Account(client, "heidi")
        _secret(heidi)
        job = _submit(heidi, receiver.url)
        services = client.app.state.services
        _end(services, JobStatus.succeeded)

        async def run_for(seconds: float) -> None:
            sender = make_webhook_sender(services, transport=Exploding())
            task = asyncio.create_task(sender.run())
            await asyncio.sleep(seconds)
            sender.stop()
            await task

        asyncio.run(run_for(2.0))
        (delivery,) = heidi.get(f"/v1/jobs/{job['id']}").json()["webhook"]["deliveries"]
    assert Exploding.calls == 3  # three attempts, then no more
    assert delivery["status"] == "failed" and delivery["attempts"] == 3
    assert delivery["last_error"] == "could not be sent: ValueError"


def test_an_attempt_whose_sender_died_is_not_tried_beyond_the_limit(
        alice: Account, elsewhere: Services, receiver: WebhookReceiver) -> None:
    """A claim counts its attempt first; a sender killed during the last one leaves the
    row due with every attempt spent: the next claim fails it instead of sending again."""
    alice.client.app.state.webhook_sender.stop()
    time.sleep(0.2)
    _secret(alice)
    job = _submit(alice, receiver.url)
    _end(elsewhere, JobStatus.succeeded)
    with elsewhere.write_session_factory() as session:
        session.execute(update(WebhookDelivery).values(attempts=3))
        session.commit()
    with elsewhere.write_session_factory() as session:
        assert outbox.claim_due(session, hold_s=60, limit=10, max_attempts=3, per_owner=4,
                                in_flight={}) == []
    (delivery,) = alice.get(f"/v1/jobs/{job['id']}").json()["webhook"]["deliveries"]
    assert delivery["status"] == "failed" and "not tried again" in delivery["last_error"]
    assert receiver.calls == []


def test_a_disabled_accounts_webhooks_are_not_sent(
        client: TestClient, alice: Account, elsewhere: Services,
        receiver: WebhookReceiver) -> None:
    admin = make_admin(client.app, Account(client, "root"))
    _secret(alice)
    job = _submit(alice, receiver.url)
    assert admin.post(f"/v1/admin/users/{alice.id}/disable").status_code == 200
    _end(elsewhere, JobStatus.succeeded)
    time.sleep(1.0)
    assert receiver.calls == []
    with elsewhere.session_factory() as session:
        delivery = session.scalars(select(WebhookDelivery)
                                   .where(WebhookDelivery.job_id == job["id"])).one()
    assert delivery.status == "failed" and "disabled" in (delivery.last_error or "")
