"""Both transports to a real ML side (local Ray cluster), and a job through the HTTP one."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from ml_backend.protocol import GenerationRequest, Progress, Result
from tests.servers import CLUSTER_SECRET
from tests.web_backend.helpers import Account, wait_for
from web_backend.app import create_app
from web_backend.jobs.ml_client import HandleMLClient, HttpMLClient, MLUnavailable

pytestmark = pytest.mark.slow


async def _collect(client, request: GenerationRequest) -> list:
    return [m async for m in client.generate(request)]


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_generate_info_sample(cluster: dict, transport: str) -> None:
    async def run() -> tuple:
        client = (HttpMLClient(cluster["url"], CLUSTER_SECRET) if transport == "http"
                  else HandleMLClient(cluster["handle"]))
        assert client.known_info() is None and await client.reachable()
        messages = await _collect(client, GenerationRequest(prompt="smile", steps=3, seed=2))
        return messages, await client.info(), await client.sample(GenerationRequest(seed="A")), \
            client.known_info()

    messages, info, sample, known = asyncio.run(run())
    assert [type(m) for m in messages] == [Progress] * 3 + [Result]
    assert info["models"]["default"]["demo_weights"] and known == info
    assert isinstance(sample, Result) and sample.steps == 0


def test_http_transport_with_a_wrong_secret_is_unavailable(cluster: dict) -> None:
    async def run() -> None:
        wrong = HttpMLClient(cluster["url"], "x" * 64)
        assert not await wrong.reachable()  # readiness says so too
        await wrong.info()

    with pytest.raises(MLUnavailable, match="refused our shared secret"):
        asyncio.run(run())


def test_a_job_runs_through_the_http_ingress(cluster: dict, make_settings) -> None:
    settings = make_settings(ml={"transport": "http", "url": cluster["url"],
                                 "secret": CLUSTER_SECRET})
    with TestClient(create_app(settings)) as client:
        alice = Account(client, "alice")
        job = alice.post("/v1/jobs", json={"prompt": "cat ears", "steps": 4, "seed": 9}).json()
        state = wait_for(alice, job["id"], lambda j: j["status"] not in ("queued", "running"),
                         timeout=60)
        assert state["status"] == "succeeded", state["error"]
        assert client.get(state["image_url"]).content.startswith(b"\x89PNG")


def test_killing_the_replica_mid_job_retries_and_completes(cluster: dict, make_settings) -> None:
    import os
    import signal

    from web_backend.core.models import Job

    handle = cluster["handle"]
    settings = make_settings(dispatch={"backoff_s": [1.0], "lease_s": 10})
    app = create_app(settings, ml_client=HandleMLClient(handle))
    with TestClient(app) as client:
        alice = Account(client, "alice")
        job = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 120, "seed": 3}).json()
        wait_for(alice, job["id"], lambda j: j["progress"]["step"] >= 3, timeout=60)
        victim = handle.info.remote().result()["replica"]["pid"]
        os.kill(victim, signal.SIGKILL)  # the replica dies as on a reclaimed spot node
        state = wait_for(alice, job["id"], lambda j: j["status"] not in ("queued", "running"),
                         timeout=180)
        assert state["status"] == "succeeded", state["error"]
        with app.state.services.session_factory() as session:
            assert session.get(Job, job["id"]).attempts == 2
        assert handle.info.remote().result()["replica"]["pid"] != victim


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_ndjson_lines_end_only_at_newlines(size: int) -> None:
    import asyncio

    from web_backend.jobs.ml_client import _ndjson_lines

    data = '{"message": "a\u2028b\x85c"}\n{"n": 2}\n{"n": 3}'.encode()

    async def lines() -> list[bytes]:
        async def chunks():
            for i in range(0, len(data), size):
                yield data[i:i + size]
        return [line async for line in _ndjson_lines(chunks())]

    assert asyncio.run(lines()) == data.split(b"\n")
