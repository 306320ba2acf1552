"""Unicode digits, line and paragraph separators and control characters in every text
field of the API: never a 500, a 4xx that says what to fix, and whatever is accepted is
stored as plain text that any line reader keeps whole (hypothesis-generated)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web_backend.helpers import SECRET, Account
from web_backend.app import create_app
from web_backend.core import migrate
from web_backend.core.settings import WebSettings

TRICKY = ("²³¹①⑳٣१𝟙⁰½Ⅻ٠"                       # str.isdigit() or numeric, not ASCII digits
          "\u2028\u2029\x85\x1c\x1d\x1e\v\f\r\n\t"   # what str.splitlines() breaks on
          "\x00\x1b\x7f\u200b\ufeff\u202e"          # controls, zero-width, bidi override
          "aZ09 :|-._@/")
text = st.text(alphabet=st.sampled_from(TRICKY), min_size=1, max_size=16)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("text-fields")
    url = f"sqlite:///{data / 'clipgan.db'}"
    migrate.upgrade(url)
    app = create_app(WebSettings(
        env="prod", secret_key=SECRET, data={"dir": data, "database_url": url},
        limits={"submissions_per_minute": 100_000, "max_active_jobs": 100_000,
                "daily_images": 100_000},
        auth={"login_attempts_per_minute": 100_000, "registrations_per_hour": 100_000,
              "failed_sign_ins_per_hour": 100_000},
        samples={"per_minute": 100_000}))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def alice(client: TestClient) -> Account:
    return Account(client, "alice")


def _sound(response: Any, *, may_be_unavailable: bool = False) -> None:
    unavailable = may_be_unavailable and response.status_code == 503  # no ML side here
    assert response.status_code < 500 or unavailable, (response.status_code,
                                                        response.text[:300])
    if response.status_code >= 400:
        assert "detail" in response.json()
    elif response.headers.get("content-type", "").startswith("application/json"):
        assert len(response.text.splitlines()) <= 1  # no raw line break inside


FIELDS = ["prompt", "negative_prompt", "seed", "model", "prompts"]


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=text)
def test_job_fields(client: TestClient, alice: Account, field: str, value: str) -> None:
    body: dict[str, Any] = {"prompt": "smile", "steps": 3}
    body[field] = [{"text": value}] if field == "prompts" else value
    if field == "prompts":
        del body["prompt"]
    r = alice.post("/v1/jobs", json=body)
    _sound(r)
    if r.status_code == 202:
        stored = json.dumps(r.json()["request"], ensure_ascii=False)
        assert not any(c in stored for c in "\u2028\u2029\x85\r\n\x00\x1b")


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(value=text)
def test_headers_and_queries(client: TestClient, alice: Account, value: str) -> None:
    # the seed is read (the 500 of "²") before the ML side is asked
    _sound(client.get("/v1/sample.png", params={"seed": value}), may_be_unavailable=True)
    _sound(client.get("/v1/sample.png", params={"model": value}), may_be_unavailable=True)
    _sound(alice.get("/v1/jobs", params={"cursor": value}))
    _sound(alice.get("/v1/jobs", params={"status": value}))
    _sound(alice.get(f"/v1/jobs/{quote(value, safe='')}"))
    raw = value.encode("utf-8")  # a header carries bytes: UTF-8 sent raw, as clients do
    if not any(c in raw for c in b"\r\n\x00"):
        _sound(client.post("/v1/jobs", json={"prompt": "smile"}, headers=[
            (b"Authorization", alice.auth["Authorization"].encode()),
            (b"Idempotency-Key", raw)]))


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(username=text, email=text, password=text)
def test_account_fields(client: TestClient, username: str, email: str, password: str) -> None:
    _sound(client.post("/v1/users", json={"username": username, "email": f"{email}@x.io",
                                          "password": password * 8}))
    _sound(client.post("/v1/auth/token", data={"username": username, "password": password}))
