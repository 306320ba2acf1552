"""Health, readiness (database + ML side + Redis) and the model list."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ray import serve

from ml_backend.serve import build_app
from ml_backend.settings import MLSettings
from web_backend.app import create_app
from web_backend.ml_client import HandleMLClient
from web_backend.settings import WebSettings


@pytest.fixture(scope="module")
def ml_handle(demo_data_dir: Path) -> Iterator:
    yield serve.run(build_app(MLSettings(data_dir=demo_data_dir, device="cpu")),
                    name="clipgan-web-tests", _local_testing_mode=True)


def test_healthz_needs_nothing(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_dependency(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"] == "ok" and checks["ml"].startswith("unreachable")


def test_ready_and_models_with_the_ml_side(make_settings: Callable[..., WebSettings],
                                           ml_handle) -> None:
    app = create_app(make_settings(redis_url="redis://127.0.0.1:6379/0"),
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
    broken = make_settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with TestClient(create_app(broken)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"].startswith("unreachable")


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert client.get("/nope").json() == {"detail": "Not Found"}
    r = client.put("/healthz")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
