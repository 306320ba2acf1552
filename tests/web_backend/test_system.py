"""Health, readiness (database + ML side + Redis) and the model list."""

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from web_backend.app import create_app
from web_backend.ml_client import HandleMLClient
from web_backend.settings import WebSettings


def test_healthz_needs_nothing(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_dependency(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"] == "ok" and checks["ml"].startswith("unreachable")


def test_ready_and_models_with_the_ml_side(make_settings: Callable[..., WebSettings],
                                           ml_handle, redis_url: str) -> None:
    app = create_app(make_settings(data={"redis_url": redis_url}),
                     ml_client=HandleMLClient(ml_handle))
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.status_code == 200, r.json()
        assert r.json()["checks"] == {"database": "ok", "ml": "ok", "redis": "ok"}
        models = client.get("/v1/models").json()["models"]
        assert models["default"]["demo_weights"] is True


def test_models_without_ml_side_is_503_with_retry(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 503 and "jobs are still accepted" in r.json()["detail"]
    assert r.headers["retry-after"] == "30"


def test_readyz_fails_when_the_database_is_gone(make_settings: Callable[..., WebSettings],
                                                tmp_path: Path) -> None:
    broken = make_settings(data={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/x"})
    with TestClient(create_app(broken)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"].startswith("unreachable")


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert client.get("/nope").json() == {"detail": "Not Found"}
    r = client.put("/healthz")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


def test_cors_is_same_origin_unless_configured(make_settings: Callable[..., WebSettings]) -> None:
    preflight = {"Origin": "https://anime.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings())) as closed:
        r = closed.options("/v1/jobs", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    allowed = make_settings(http={"cors_origins": ["https://anime.example"]})
    with TestClient(create_app(allowed)) as open_:
        r = open_.options("/v1/jobs", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://anime.example"
        other = open_.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
