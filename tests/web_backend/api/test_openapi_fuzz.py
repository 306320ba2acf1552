"""Schemathesis: generated requests never produce a 500, and every response is one the
document declares (status, body schema, headers, content type): what a generated
client expects is what it gets."""

import secrets
from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from web_backend.app import create_app
from web_backend.core import migrate
from web_backend.core.settings import WebSettings

_DATA = Path(__import__("tempfile").mkdtemp(prefix="clipgan-fuzz-"))
_URL = f"sqlite:///{_DATA / 'fuzz.db'}"
migrate.upgrade(_URL)
_APP = create_app(WebSettings(
    env="prod", secret_key=secrets.token_hex(32), data={"dir": _DATA, "database_url": _URL},
    limits={"submissions_per_minute": 100_000, "max_active_jobs": 100_000,
            "daily_images": 100_000},
    auth={"login_attempts_per_minute": 100_000, "registrations_per_hour": 100_000},
    openai={"wait_s": 0.2}))


def _token() -> str:
    with TestClient(_APP) as client:
        client.post("/v1/users", json={"username": "fuzzer", "email": "f@x.io",
                                       "password": "fuzzing-password"})
        from web_backend.core.models import User

        with _APP.state.services.write_session_factory() as session:
            user = session.query(User).filter_by(username="fuzzer").one()
            user.is_admin = True
            session.commit()
        r = client.post("/v1/auth/token", data={"username": "fuzzer",
                                                "password": "fuzzing-password"})
        return r.json()["access_token"]


_AUTH = {"Authorization": f"Bearer {_token()}"}
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case) -> None:
    if case.path == "/v1/auth/logout":
        return  # would end the fuzzer's own session
    response = case.call(headers=_AUTH)
    documented_unavailable = (case.path in {"/readyz", "/v1/models", "/v1/sample.png",
                                            "/openai/v1/models",
                                            "/openai/v1/images/generations"}
                              and response.status_code in (503, 504))  # no ML side here
    assert response.status_code < 500 or documented_unavailable, (
        case.method, case.path, response.status_code, response.text[:300])
    if 400 <= response.status_code < 500:  # every 4xx says what to fix (OpenAI's way there)
        assert ("error" if case.path.startswith("/openai/") else "detail") in response.json()
    case.validate_response(response, checks=[
        status_code_conformance, response_schema_conformance, response_headers_conformance,
        content_type_conformance])
