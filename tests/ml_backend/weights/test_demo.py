"""Demo weights: built once, identical everywhere, and always labelled as untrained."""

import logging
from pathlib import Path

import torch

from ml_backend.weights import demo_generator_path, load_generator, read_checkpoint
from ml_backend.weights.demo import build_demo_generator


def test_demo_generator_is_deterministic() -> None:
    a, b = build_demo_generator(), build_demo_generator()
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_demo_generator_is_cached_under_the_data_dir(tmp_path: Path) -> None:
    path = demo_generator_path(tmp_path)
    assert path.is_relative_to(tmp_path) and path.exists()
    stamp = path.stat().st_mtime_ns
    assert demo_generator_path(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp, "second call must reuse the cached file"


def test_demo_weights_are_labelled(tmp_path: Path, caplog) -> None:
    path = demo_generator_path(tmp_path)
    assert read_checkpoint(path).is_demo
    with caplog.at_level(logging.WARNING):
        generator, ckpt = load_generator(path)
    assert "UNTRAINED DEMO WEIGHTS" in caplog.text
    img = generator(torch.randn(1, ckpt.config.z_dim))
    assert img.shape == (1, 3, 64, 64)
    assert 0.05 < img.std().item() < 5, "demo pictures should be neither flat nor exploding"
