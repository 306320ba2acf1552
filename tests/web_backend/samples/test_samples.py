"""Instant samples: same name, same character; cached; limited; clear errors."""

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.protocol import sample_latent, seed_to_int
from ml_backend.stylegan2 import to_uint8_images
from tests.web_backend.helpers import SQLITE_ONLY
from web_backend.app import create_app
from web_backend.core.settings import WebSettings
from web_backend.jobs.ml_client import HandleMLClient
from web_backend.samples.onnx import OnnxSampler, SampleImage, SamplerBusy


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


@SQLITE_ONLY
def test_a_seed_of_unicode_digits_is_a_name(sample_graph: Path,
                                            make_settings: Callable[..., WebSettings]) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: such a seed once reached a 500."""
    app = create_app(make_settings(samples={"onnx": sample_graph, "per_minute": 100}))
    with TestClient(app) as client:
        for seed in ("²", "①", "¹²³", "٣"):
            r = client.get("/v1/sample.png", params={"seed": seed})
            assert r.status_code == 200, (seed, r.text)
            assert r.headers["x-seed"] == str(seed_to_int(seed))


def test_samples_without_an_ml_side_are_503(client: TestClient) -> None:
    r = client.get("/v1/sample.png", params={"seed": "Asuka"})
    assert r.status_code == 503 and r.headers["retry-after"] == "10"


@pytest.fixture(scope="module")
def sample_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo generator's sample graph, as `clipgan export-onnx` writes it."""
    from ml_backend.onnx_export import export_sample_graph
    from ml_backend.weights import build_generator
    from ml_backend.weights.demo import build_demo_generator

    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    export_sample_graph(build_generator(build_demo_generator()), path, model="default",
                        default_psi=1.0, demo_weights=True)
    return path


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_samples_from_onnx_need_no_ml_side(make_settings: Callable[..., WebSettings],
                                           sample_graph: Path) -> None:
    """No ML side at all: the web process renders the character on its own CPU, the same
    character the generator (torch) renders for that name."""
    import torch

    from ml_backend.weights import build_generator
    from ml_backend.weights.demo import build_demo_generator

    app = create_app(make_settings(samples={"onnx": sample_graph}))  # no ML client
    with TestClient(app) as client:
        first = client.get("/v1/sample.png", params={"seed": "Asuka", "psi": 0.8})
        assert first.status_code == 200, first.text
        assert first.headers["x-seed"] == str(seed_to_int("Asuka"))
        again = client.get("/v1/sample.png", params={"seed": "Asuka", "psi": 0.8})
        assert again.content == first.content and again.headers["x-cache"] == "hit"
        other = client.get("/v1/sample.png", params={"seed": "Rei", "psi": 0.8})
        assert other.status_code == 200 and other.content != first.content
        average = [client.get("/v1/sample.png", params={"seed": name, "psi": 0}).content
                   for name in ("Asuka", "Rei")]  # psi 0: every name is the average face
        assert (_pixels(average[0]) == _pixels(average[1])).all()
        random = client.get("/v1/sample.png")
        assert random.status_code == 200 and random.headers["x-cache"] == "miss"
        elsewhere = client.get("/v1/sample.png", params={"seed": "x", "model": "pokemon"})
        assert elsewhere.status_code == 503, "another model still needs the ML side"

    generator = build_generator(build_demo_generator())
    z = torch.tensor([sample_latent(seed_to_int("Asuka"), generator.config.z_dim)])
    with torch.no_grad():
        image = generator.synthesize(generator.map(z, 0.8), noise_mode="const")
    expected = to_uint8_images(image)[0].numpy().astype(np.int16)
    got = _pixels(first.content)
    assert got.shape == expected.shape == (64, 64, 3)
    assert np.abs(got - expected).max() <= 1, "not the character torch renders for 'Asuka'"


def test_a_file_that_is_not_a_sample_graph_is_refused_at_start(
        make_settings: Callable[..., WebSettings], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    for path in (bogus, tmp_path / "missing.onnx"):
        with pytest.raises(ValueError, match=r"^CLIPGAN_SAMPLE_ONNX: .* cannot be loaded"):
            create_app(make_settings(samples={"onnx": path}))


@pytest.mark.slow
def test_a_crowd_of_onnx_samples_waits_on_the_loop_and_is_bounded(sample_graph: Path) -> None:
    """One sample renders at a time; a few wait their turn (not in the shared thread
    pool); beyond that the crowd is told to come back (503 at the route)."""
    sampler = OnnxSampler(sample_graph, max_waiting=2)

    async def crowd() -> list[object]:
        tasks = [asyncio.create_task(sampler.render(seed, None)) for seed in range(20)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(crowd())
    drawn = [r for r in results if isinstance(r, SampleImage)]
    assert len(drawn) == 3 and all(r.png.startswith(b"\x89PNG") for r in drawn)
    assert all(isinstance(r, SamplerBusy) for r in results if r not in drawn)
