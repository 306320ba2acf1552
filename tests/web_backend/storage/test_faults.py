"""The picture store failing under a running service: nothing lost, never a 500.

The S3 cases use their own emulated server (moto), stopped with SIGSTOP: it keeps its
connections open and answers nothing, like a hung store; SIGCONT brings it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.servers import S3Server
from tests.web_backend.helpers import Account, wait_for
from tests.web_backend.jobs.test_jobs import finish, png
from web_backend.app import create_app
from web_backend.core.settings import WebSettings
from web_backend.jobs.ml_client import HandleMLClient


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """An S3 server for this test alone (it will be stopped), in the AWS environment."""
    server = S3Server().start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.resume()
        server.stop()


class _Outage:
    """Takes a store down and brings it back: a hung S3 server, or a data directory whose
    ``blobs`` became a file (an unmounted volume)."""

    def __init__(self, kind: str, root: Path, server: S3Server | None) -> None:
        self.kind, self.root, self.server = kind, root, server

    def begin(self) -> None:
        if self.server is not None:
            self.server.pause()
        else:
            if self.root.exists():
                self.root.rename(self.root.with_name("blobs.away"))
            self.root.write_text("not a directory")

    def end(self) -> None:
        if self.server is not None:
            self.server.resume()
        else:
            self.root.unlink()
            if self.root.with_name("blobs.away").exists():
                self.root.with_name("blobs.away").rename(self.root)


@pytest.fixture(params=["local", "s3"])
def outage_settings(request: pytest.FixtureRequest, make_settings: Callable[..., WebSettings],
                    tmp_path: Path) -> tuple[Callable[..., WebSettings], Callable[[], _Outage]]:
    server = request.getfixturevalue("own_s3") if request.param == "s3" else None
    data = {"storage_timeout_s": 1.0}
    if server is not None:
        data["storage_url"] = f"s3://{server.new_bucket()}"

    def settings(**overrides: object) -> WebSettings:
        return make_settings(data=data, **overrides)

    return settings, lambda: _Outage(request.param, tmp_path / "blobs", server)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_download_while_the_store_is_down_is_a_503_with_retry_after(outage_settings) -> None:
    make, outage = outage_settings
    app = create_app(make())
    with TestClient(app) as client:
        alice = Account(client, "alice")
        job = alice.post("/v1/jobs", json={"prompt": "smile"}).json()["id"]
        picture = png((3, 4, 5))
        finish(app, job, picture)
        link = alice.get(f"/v1/jobs/{job}").json()["image_url"]
        down = outage()
        down.begin()
        try:
            started = time.monotonic()
            for response in (alice.get(f"/v1/jobs/{job}/image"), client.get(link)):
                assert response.status_code == 503, response.text
                assert int(response.headers["Retry-After"]) > 0
                assert "store" in response.json()["detail"]
            assert time.monotonic() - started < 6  # each within the store's deadline (1 s)
            assert alice.get(f"/v1/jobs/{job}").json()["status"] == "succeeded"
        finally:
            down.end()
        assert client.get(link).content == picture


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_result_the_store_cannot_take_is_retried_never_lost(outage_settings,
                                                              ml_handle) -> None:
    """The store is down while the search runs and when its result comes: the job is not
    marked succeeded (it has no picture); it goes back in line and succeeds once the store
    is back, with a picture that downloads."""
    make, outage = outage_settings
    settings = make(dispatch={"backoff_s": [1.0, 1.0, 1.0, 1.0], "store_wait_s": 1.5,
                              "lease_s": 10})
    app = create_app(settings, ml_client=HandleMLClient(ml_handle))
    down = outage()
    with TestClient(app) as client:
        alice = Account(client, "alice")
        down.begin()
        try:
            job = alice.post("/v1/jobs", json={"prompt": "smile", "steps": 4,
                                               "preview_every": 2}).json()["id"]
            seen = wait_for(alice, job, lambda j: "could not be stored" in (j["error"] or ""),
                            timeout=60)
            assert seen["status"] in ("queued", "running") and seen["image_url"] is None
            statuses = {alice.get(f"/v1/jobs/{job}").json()["status"] for _ in range(5)}
            assert "succeeded" not in statuses
        finally:
            down.end()
        done = wait_for(alice, job, lambda j: j["status"] not in ("queued", "running"),
                        timeout=90)
        assert done["status"] == "succeeded", done
        image = client.get(done["image_url"])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
