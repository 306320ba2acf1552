"""Instant samples: same name, same character; cached; limited; clear errors."""

from collections.abc import Callable

from fastapi.testclient import TestClient

from web_backend.app import create_app
from web_backend.ml_client import HandleMLClient
from web_backend.settings import WebSettings


def test_samples_by_name_are_stable_and_cached(make_settings: Callable[..., WebSettings],
                                               ml_handle) -> None:
    app = create_app(make_settings(samples={"per_minute": 4}), ml_client=HandleMLClient(ml_handle))
    with TestClient(app) as client:
        first = client.get("/v1/sample.png", params={"seed": "Asuka", "psi": 0.8})
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        assert first.content.startswith(b"\x89PNG") and first.headers["x-cache"] == "miss"
        again = client.get("/v1/sample.png", params={"seed": "Asuka", "psi": 0.8})
        assert again.content == first.content and again.headers["x-cache"] == "hit"
        other = client.get("/v1/sample.png", params={"seed": "Rei", "psi": 0.8})
        assert other.content != first.content
        unknown = client.get("/v1/sample.png", params={"seed": "x", "model": "pokemon"})
        assert unknown.status_code == 422 and "unknown model 'pokemon'" in unknown.json()["detail"]
        limited = client.get("/v1/sample.png", params={"seed": "y"})
        assert limited.status_code == 429 and "retry-after" in limited.headers
        bad = client.get("/v1/sample.png", params={"psi": 5})
        assert bad.status_code in (422, 429)


def test_samples_without_an_ml_side_are_503(client: TestClient) -> None:
    r = client.get("/v1/sample.png", params={"seed": "Asuka"})
    assert r.status_code == 503 and r.headers["retry-after"] == "10"
