"""Shared fixtures: one demo-weights pipeline per session (building it takes seconds)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_backend.pipeline import Pipeline
from ml_backend.settings import MLSettings


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clipgan-data")


@pytest.fixture(scope="session")
def pipeline(demo_data_dir: Path) -> Iterator[Pipeline]:
    pipe = Pipeline.from_settings(MLSettings(data_dir=demo_data_dir, device="cpu",
                                             batch_slots=8))
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def ml_handle(demo_data_dir: Path):
    """The real Serve deployment class, in-process (local testing mode, no cluster)."""
    from ray import serve

    from ml_backend.serve import build_app

    return serve.run(build_app(MLSettings(data_dir=demo_data_dir, device="cpu")),
                     name="clipgan-tests", _local_testing_mode=True)
