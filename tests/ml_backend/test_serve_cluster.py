"""Integration: the app on a real local Ray cluster, through a handle and the HTTP ingress."""

import asyncio
import json
import time

import httpx
import pytest

from tests.servers import CLUSTER_SECRET as SECRET

pytestmark = pytest.mark.slow

def test_handle_streams_a_result(cluster: dict) -> None:
    from ml_backend.protocol import GenerationRequest, Progress, Result

    async def run() -> list:
        stream = cluster["handle"].options(stream=True).generate.remote(
            GenerationRequest(prompt="smile", steps=3, seed=1))
        return [m async for m in stream]

    messages = asyncio.run(run())
    assert [type(m) for m in messages] == [Progress] * 3 + [Result]


def test_cancel_through_the_handle_stops_the_search(cluster: dict) -> None:
    from ml_backend.protocol import GenerationRequest

    async def run() -> dict:
        handle = cluster["handle"]
        stream = handle.options(stream=True).generate.remote(
            GenerationRequest(prompt="smile", steps=500, seed=2))
        async for message in stream:
            if message.step >= 2:
                stream.cancel()
                break
        for _ in range(100):
            load = (await handle.info.remote())["load"]["default"]
            if load["active"] == 0:
                return load
            await asyncio.sleep(0.1)
        return load

    load = asyncio.run(run())
    assert load["active"] == 0 and load["steps_done"] < 100


def test_health_check_reports_healthy(cluster: dict) -> None:
    from ray import serve

    deadline = time.time() + 60
    while time.time() < deadline:
        status = serve.status().applications["clipgan"].deployments["Generator"].status
        if status == "HEALTHY":
            break
        time.sleep(1)
    assert status == "HEALTHY"
    cluster["handle"].check_health.remote().result(timeout_s=60)


def test_http_ingress_requires_the_secret(cluster: dict) -> None:
    base = f"http://127.0.0.1:{cluster['port']}"
    body = {"prompt": "smile", "steps": 2, "seed": 3}
    assert httpx.post(f"{base}/v1/generate", json=body, timeout=60).status_code == 401
    wrong = httpx.get(f"{base}/v1/info", headers={"Authorization": "Bearer " + "x" * 64},
                      timeout=60)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{base}/v1/ready", timeout=60).status_code == 401  # probes need it too


def test_http_ingress_streams_ndjson_with_the_secret(cluster: dict) -> None:
    base = f"http://127.0.0.1:{cluster['port']}"
    auth = {"Authorization": f"Bearer {SECRET}"}
    with httpx.stream("POST", f"{base}/v1/generate", headers=auth, timeout=120,
                      json={"prompt": "smile", "steps": 3, "seed": 3}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [m["kind"] for m in lines] == ["progress"] * 3 + ["result"]
    assert lines[-1]["seed"] == 3
    bad = httpx.post(f"{base}/v1/generate", headers=auth, json={"steps": 0}, timeout=60)
    assert bad.status_code == 422 and "steps" in bad.text
    info = httpx.get(f"{base}/v1/info", headers=auth, timeout=60)
    assert info.status_code == 200 and info.json()["models"]["default"]["demo_weights"]
    ready = httpx.get(f"{base}/v1/ready", headers=auth, timeout=60)  # the door, no replica
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}
