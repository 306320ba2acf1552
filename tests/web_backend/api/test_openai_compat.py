"""clipgan from OpenAI clients: the official ``openai`` package (its own HTTP stack, its
retries) and Open WebUI's request body, against a real uvicorn server running the whole
app with the demo generator in-process."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from PIL import Image

from tests.web_backend.helpers import SQLITE_ONLY
from web_backend.app import create_app
from web_backend.core.settings import WebSettings
from web_backend.jobs.ml_client import HandleMLClient

pytestmark = SQLITE_ONLY  # the database under it is the native API's business (tested there)
FAST = {"steps": 2, "seed": 3}  # clipgan's own fields, as extra_body


class Served:
    """The app on a real port (the SDK brings its own HTTP client)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def account(self, name: str) -> tuple[dict[str, str], str]:
        """(a signed-in user's headers, an API key of theirs)."""
        httpx.post(f"{self.base}/v1/users", json={"username": name, "email": f"{name}@x.io",
                                                  "password": "password123"}).raise_for_status()
        token = httpx.post(f"{self.base}/v1/auth/token", data={
            "username": name, "password": "password123"}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        key = httpx.post(f"{self.base}/v1/users/me/api-keys", json={"name": "openai"},
                         headers=auth).json()["key"]
        return auth, key

    def sdk(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=f"{self.base}/openai/v1", **options)

    def jobs(self, auth: dict[str, str]) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base}/v1/jobs", params={"limit": 100},
                              headers=auth).json()["items"])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def served(make_settings: Callable[..., WebSettings], ml_handle: Any) -> Iterator[Served]:
    settings = make_settings(env="dev", dispatch={"poll_s": 0.05, "backoff_s": [0.1]},
                             limits={"max_active_jobs": 20, "submissions_per_minute": 1000})
    server = Served(create_app(settings, ml_client=HandleMLClient(ml_handle)))
    yield server
    server.stop()


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_the_sdk_gets_pictures_as_base64_and_as_links(served: Served) -> None:
    auth, key = served.account("alice")
    client = served.sdk(key)
    assert [m.id for m in client.models.list().data] == ["default"]
    inline = client.images.generate(prompt="blue hair", response_format="b64_json",
                                    size="64x64", extra_body=FAST)
    (picture,) = inline.data
    assert picture.b64_json and _png_size(base64.b64decode(picture.b64_json)) == (64, 64)
    assert picture.revised_prompt == "blue hair"
    linked = client.images.generate(prompt="smile", n=2, size="128x128", extra_body=FAST)
    assert len(linked.data) == 2
    pictures = [httpx.get(item.url or "").content for item in linked.data]
    assert [_png_size(p) for p in pictures] == [(128, 128)] * 2  # size 2x: the upscaler
    assert pictures[0] != pictures[1]  # two pictures, not one twice
    jobs = served.jobs(auth)  # normal jobs: in the list, counted by the limits
    assert len(jobs) == 3 and {j["status"] for j in jobs} == {"succeeded"}


def test_a_size_the_model_does_not_make_is_a_clear_400(served: Served) -> None:
    auth, key = served.account("alice")
    with pytest.raises(openai.BadRequestError) as refused:
        served.sdk(key).images.generate(prompt="smile", size="1024x1024", extra_body=FAST)
    assert refused.value.status_code == 400 and refused.value.param == "size"
    assert refused.value.code == "unsupported_size"
    assert "64x64, 128x128, 256x256" in str(refused.value)
    assert served.jobs(auth) == []


def test_an_exhausted_quota_is_a_rate_limit_error_after_the_retries_without_duplicates(
        served: Served) -> None:
    auth, key = served.account("alice")
    admin_auth, _ = served.account("root")
    with served.app.state.services.write_session_factory() as session:
        from web_backend.core.models import User

        session.get(User, 2).is_admin = True  # root
        session.commit()
    httpx.put(f"{served.base}/v1/admin/users/1/limits", json={"daily_images": 1},
              headers=admin_auth).raise_for_status()
    client = served.sdk(key, max_retries=2)
    client.images.generate(prompt="smile", extra_body=FAST)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError, match="daily quota"):
        client.images.generate(prompt="another", extra_body=FAST)
    assert time.monotonic() - started < 30  # the SDK did not sleep until midnight
    assert len(served.jobs(auth)) == 1


def test_a_retried_request_waits_for_the_first_attempts_jobs(
        make_settings: Callable[..., WebSettings], ml_handle: Any) -> None:
    """The first attempt answers 504 while its picture is still being made; the SDK's
    retries (X-Stainless-Retry-Count) wait for that job instead of making new ones."""
    settings = make_settings(env="dev", dispatch={"poll_s": 0.05}, openai={"wait_s": 0.5})
    served = Served(create_app(settings, ml_client=HandleMLClient(ml_handle)))
    try:
        auth, key = served.account("alice")
        client = served.sdk(key, max_retries=2)
        try:
            client.images.generate(prompt="slow", response_format="b64_json",
                                   extra_body={"steps": 40, "seed": 1})
        except openai.InternalServerError as exc:  # 504 three times: still no duplicate
            assert exc.status_code == 504 and "still being made" in str(exc)
        assert len(served.jobs(auth)) == 1
        patient = served.sdk(key, max_retries=10)  # its retries wait for its own job
        again = patient.images.generate(prompt="slow", response_format="b64_json",
                                        extra_body={"steps": 40, "seed": 1})
        assert len(again.data) == 1 and len(served.jobs(auth)) == 2  # a new request: new job
    finally:
        served.stop()


def test_a_revoked_key_is_an_authentication_error(served: Served) -> None:
    auth, key = served.account("alice")
    key_id = key[4:16]
    httpx.delete(f"{served.base}/v1/users/me/api-keys/{key_id}",
                 headers=auth).raise_for_status()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        served.sdk(key).images.generate(prompt="smile", extra_body=FAST)


def test_open_webui_request_body(served: Served) -> None:
    """What Open WebUI posts (its image generation with an OpenAI engine)."""
    _, key = served.account("alice")
    r = httpx.post(f"{served.base}/openai/v1/images/generations", headers={
        "Authorization": f"Bearer {key}"}, json={
        "model": "default", "prompt": "a girl with silver hair", "n": 1, "size": "64x64",
        "response_format": "b64_json"}, timeout=120)
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG")
    unknown = httpx.post(f"{served.base}/openai/v1/images/generations", headers={
        "Authorization": f"Bearer {key}"}, json={"prompt": "x", "model": "dall-e-3"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "default" in unknown.json()["error"]["message"]
