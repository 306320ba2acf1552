"""Health, readiness (database + ML side + Redis) and the model list."""

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from web_backend.app import create_app
from web_backend.core.settings import WebSettings
from web_backend.jobs.ml_client import HandleMLClient


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


def test_responses_carry_security_headers(client: TestClient) -> None:
    for path in ("/", "/v1/jobs", "/nope", "/healthz"):
        headers = client.get(path).headers
        assert headers["content-security-policy"].startswith("default-src 'self'"), path
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"  # signed links stay on this site
    docs = client.get("/docs").headers  # FastAPI's page loads its own assets
    assert "content-security-policy" not in docs and docs["x-frame-options"] == "DENY"


def test_metrics_can_be_restricted(make_settings: Callable[..., WebSettings]) -> None:
    with TestClient(create_app(make_settings())) as anyone:
        assert anyone.get("/metrics").status_code == 200
    restricted = make_settings(http={"metrics_allow_ips": ["10.0.0.0/8"]})
    with TestClient(create_app(restricted)) as outsider:
        refused = outsider.get("/metrics")
        assert refused.status_code == 403 and "CLIPGAN_METRICS_ALLOW_IPS" in refused.text


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    settings = WebSettings(env="dev", data={"dir": tmp_path})
    create_app(settings)
    for name in ("clipgan.db", "dev-secret-key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_readiness_and_models_name_no_internal_error(make_settings, tmp_path: Path) -> None:
    broken = make_settings(data={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/x"})
    with TestClient(create_app(broken)) as client:
        assert client.get("/readyz").json()["checks"] == {"database": "unreachable",
                                                          "ml": "unreachable"}
        detail = client.get("/v1/models").json()["detail"]
        assert detail == ("the image service is not reachable right now; jobs are still "
                          "accepted and wait in the queue")


def test_the_page_has_an_icon(client: TestClient) -> None:
    """No 404 in the browser console: the page links its icon and /favicon.ico answers."""
    assert 'rel="icon" href="/static/favicon.svg"' in client.get("/").text
    for path in ("/favicon.ico", "/static/favicon.svg"):
        icon = client.get(path)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith(
            "image/svg+xml") and icon.text.startswith("<svg"), path
