"""Shared fixtures: one demo-weights pipeline per session (building it takes seconds)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_backend.pipeline import Pipeline
from ml_backend.settings import MLSettings
from tests.servers import CLUSTER_SECRET, S3Server, free_port


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


@pytest.fixture(scope="module")
def cluster(demo_data_dir: Path) -> Iterator[dict]:
    """A real local Ray cluster running the app with its private HTTP ingress."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from ml_backend.serve import build_app, start_options

    port = free_port()
    settings = MLSettings(data_dir=demo_data_dir, device="cpu", ingress_enabled=True,
                          ingress_secret=CLUSTER_SECRET, ingress_port=port, replica_cpus=1,
                          min_replicas=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(**start_options(settings))
    serve.run(build_app(settings), name="clipgan", route_prefix="/")
    try:
        yield {"port": port, "url": f"http://127.0.0.1:{port}",
               "handle": serve.get_deployment_handle("Generator", "clipgan")}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One emulated S3 server for the session; each test takes its own bucket."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
