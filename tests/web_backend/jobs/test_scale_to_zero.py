"""Scale to zero that stays at zero, on a real local Ray cluster.

The Generator deployment has ``min_replicas: 0``: a deploy starts no replica; the web
backend runs beside it with its dispatcher (capacity refreshed every second) and a
load balancer's readiness probe, and nothing of that starts a replica; the first job
does, and once it is done the replica goes back to zero and stays there.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ml_backend.settings import MLSettings
from tests.web_backend.helpers import SQLITE_ONLY, Account, wait_for
from web_backend.app import create_app
from web_backend.core.settings import WebSettings
from web_backend.jobs.ml_client import HandleMLClient

pytestmark = pytest.mark.slow
REFRESH_S = 1.0  # the dispatcher's capacity refresh, shortened: six of them pass in 6 s


@pytest.fixture(scope="module")
def idle_cluster(demo_data_dir: Path) -> Iterator[object]:
    """The Serve app on a local Ray cluster, allowed to scale to zero after 2 s idle."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from ml_backend.serve import build_app, start_options

    settings = MLSettings(data_dir=demo_data_dir, device="cpu", replica_cpus=1,
                          min_replicas=0, max_replicas=1, upscale_delay_s=0,
                          downscale_delay_s=1, downscale_to_zero_delay_s=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(**start_options(settings))
    serve.run(build_app(settings), name="clipgan", route_prefix=None)
    try:
        yield serve.get_deployment_handle("Generator", "clipgan")
    finally:
        serve.shutdown()
        ray.shutdown()


def _replicas() -> int:
    """Generator replicas running, as the Serve controller sees them (asks no replica)."""
    from ray import serve

    deployment = serve.status().applications["clipgan"].deployments["Generator"]
    return int(deployment.replica_states.get("RUNNING", 0))


def _until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


@SQLITE_ONLY  # what wakes the ML side does not depend on the database
def test_idle_stays_at_zero_and_the_first_job_wakes_it(
        idle_cluster: object, make_settings: Callable[..., WebSettings]) -> None:
    assert _replicas() == 0  # a deploy with min_replicas 0 starts no GPU
    settings = make_settings(dispatch={"capacity_refresh_s": REFRESH_S, "poll_s": 0.2})
    ml = HandleMLClient(idle_cluster, info_ttl_s=0.5)
    # the whole deployment's capacity (8 slots x max_replicas 1), from the controller,
    # at zero replicas: the dispatcher sends a burst at once and Serve scales to it
    assert asyncio.run(ml.capacity()) == 8
    assert _replicas() == 0
    app = create_app(settings, ml_client=ml)
    with TestClient(app) as client:
        alice = Account(client, "alice")
        quiet_until = time.monotonic() + 6 * REFRESH_S + 2
        while time.monotonic() < quiet_until:  # a load balancer probing, nobody working
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["ml"] == "ok"
            assert _replicas() == 0, "something woke the Generator without work"
            time.sleep(0.5)

        job = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 3}).json()
        done = wait_for(alice, job["id"], lambda j: j["status"] not in ("queued", "running"),
                        timeout=180)
        assert done["status"] == "succeeded", done
        assert alice.get("/v1/models").json()["models"]["default"]["demo_weights"] is True

        _until(lambda: _replicas() == 0, "back to zero after the job", timeout=60)
        quiet_until = time.monotonic() + 6 * REFRESH_S
        while time.monotonic() < quiet_until:  # and it stays there, models page included
            assert client.get("/readyz").status_code == 200
            assert alice.get("/v1/models").status_code == 200  # known, not asked again
            assert _replicas() == 0, "something woke the Generator without work"
            time.sleep(0.5)
