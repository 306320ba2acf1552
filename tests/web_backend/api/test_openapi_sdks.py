"""The contract with client developers: SDK generators read /openapi.json cleanly and
the client one of them generates does the whole flow against a running server.

A schema change that breaks generated clients (a renamed operation, a dropped model,
an undeclared status) fails here, not in a user's build.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.servers import free_port, start_serve, stop_serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
GENERATE = ROOT / "tools" / "sdk" / "generate.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK = {"steps": 2, "cutouts": 2, "init_candidates": 1, "preview_every": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``clipgan serve`` (in-process generator), as ``make run`` starts it."""
    port = free_port()
    proc = start_serve(tmp_path_factory.mktemp("serve"), port)
    yield f"http://127.0.0.1:{port}"
    stop_serve(proc)


def _generate(server: str, out: Path, only: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATE), f"{server}/openapi.json", str(out),
                           "--only", only], capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def sdk(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The generated package's modules, imported from a temporary folder."""
    out = tmp_path_factory.mktemp("sdk")
    done = _generate(server, out, "python")
    assert done.returncode == 0, done.stdout + done.stderr  # a warning fails too
    sys.path.insert(0, str(out / "python"))
    try:
        names = ["client", "models", "types", "api.auth.auth_register", "api.auth.auth_token",
                 "api.auth.auth_refresh", "api.auth.auth_logout", "api.users.users_me",
                 "api.jobs.jobs_submit", "api.jobs.jobs_get", "api.jobs.jobs_list",
                 "api.jobs.jobs_cancel", "api.jobs.jobs_image", "api.jobs.jobs_events",
                 "api.samples.samples_get"]
        yield {name.rsplit(".", 1)[-1]: importlib.import_module(f"clipgan_api_client.{name}")
               for name in names}
    finally:
        sys.path.remove(str(out / "python"))
        for module in [m for m in sys.modules if m.startswith("clipgan_api_client")]:
            del sys.modules[module]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _follow(sdk: dict[str, Any], client: Any, job_id: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk["jobs_get"].sync(job_id, client=client)
        if job.status.value in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def test_generated_python_client_runs_the_whole_flow(server: str, sdk: dict[str, Any]) -> None:
    client_module: ModuleType = sdk["client"]
    models: ModuleType = sdk["models"]
    anonymous = client_module.Client(base_url=server, raise_on_unexpected_status=True)

    user = sdk["auth_register"].sync(client=anonymous, body=models.UserCreate(
        username="sdk_user", email="sdk@example.com", password="correct horse"))
    assert isinstance(user, models.UserOut) and user.username == "sdk_user"
    first = sdk["auth_token"].sync(client=anonymous, body=models.SignInForm(
        username="sdk_user", password="correct horse"))
    assert isinstance(first, models.TokenPair)
    pair = sdk["auth_refresh"].sync(client=anonymous, body=models.RefreshRequest(
        refresh_token=first.refresh_token))
    assert isinstance(pair, models.TokenPair) and pair.refresh_token != first.refresh_token
    signed_in = client_module.AuthenticatedClient(base_url=server, token=pair.access_token,
                                                  raise_on_unexpected_status=True)
    me = sdk["users_me"].sync(client=signed_in)
    assert isinstance(me, models.UserDetail) and me.limits.max_active_jobs >= 1

    # JSON with weighted prompts, typed: no hand-written JSON in a form field
    request = models.JobRequest(
        prompts=[models.WeightedPrompt(text="a girl with silver hair", weight=1.0),
                 models.WeightedPrompt(text="blurry", weight=-0.5)],
        seed="sdk", **QUICK)
    submitted = sdk["jobs_submit"].sync(client=signed_in, body=request)
    assert isinstance(submitted, models.JobOut), submitted
    assert submitted.status.value in ("queued", "running")
    done = _follow(sdk, signed_in, submitted.id)
    assert done.status.value == "succeeded", done.error
    assert done.request["prompts"][1] == {"text": "blurry", "weight": -0.5}

    image = sdk["jobs_image"].sync(submitted.id, client=signed_in)  # typed bytes
    assert _png_size(image.payload.read())[0] >= 16
    events = sdk["jobs_events"].sync_detailed(submitted.id, client=signed_in)
    assert events.status_code == 200 and "event: done" in events.content.decode()
    sample = sdk["samples_get"].sync(client=anonymous, seed="sdk")
    assert _png_size(sample.payload.read())[0] >= 16

    # cancel; the active-jobs limit answers 429 with its Detail and Retry-After
    slow = models.JobRequest(prompt="a castle at night", steps=500)
    queued = [sdk["jobs_submit"].sync(client=signed_in, body=slow)
              for _ in range(me.limits.max_active_jobs)]
    refused = sdk["jobs_submit"].sync_detailed(client=signed_in, body=slow)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused
    assert isinstance(refused.parsed, models.Detail) and f"limit {me.limits.max_active_jobs}" in refused.parsed.detail
    for job in queued:
        assert sdk["jobs_cancel"].sync(job.id, client=signed_in).status.value in (
            "cancelled", "running")
    for job in queued:
        assert _follow(sdk, signed_in, job.id).status.value == "cancelled"

    # the cursor walks every job exactly once
    seen: list[str] = []
    page = sdk["jobs_list"].sync(client=signed_in, limit=2)
    while True:
        seen += [job.id for job in page.items]
        if not isinstance(page.next_cursor, str):
            break
        page = sdk["jobs_list"].sync(client=signed_in, limit=2, cursor=page.next_cursor)
    assert sorted(seen) == sorted([submitted.id, *(job.id for job in queued)])

    missing = sdk["jobs_get"].sync_detailed("no-such-job", client=signed_in)
    assert missing.status_code == 404 and "no-such-job" in missing.parsed.detail

    # sign-in attempts per address: 429 with the RateLimit headers
    wrong = models.SignInForm(username="sdk_user", password="wrong password")
    for _ in range(100):
        attempt = sdk["auth_token"].sync_detailed(client=anonymous, body=wrong)
        if attempt.status_code == 429:
            break
        assert attempt.status_code == 401 and isinstance(attempt.parsed, models.Detail)
    assert attempt.status_code == 429 and isinstance(attempt.parsed, models.Detail)
    assert {"retry-after", "ratelimit-limit", "ratelimit-reset"} <= set(attempt.headers)

    assert sdk["auth_logout"].sync_detailed(client=signed_in).status_code == 204
    after = sdk["users_me"].sync_detailed(client=signed_in)
    assert after.status_code == 401 and isinstance(after.parsed, models.Detail)


@pytest.mark.skipif(shutil.which("npm") is None and not os.environ.get("CI"),
                    reason="npm is not installed (CI requires it)")
def test_typescript_generator_reads_the_document_cleanly(server: str, tmp_path: Path) -> None:
    """@hey-api/openapi-ts (pinned in tools/sdk), then ``tsc --strict`` on what it wrote."""
    done = _generate(server, tmp_path, "typescript")
    assert done.returncode == 0, done.stdout + done.stderr
    types = (tmp_path / "typescript" / "types.gen.ts").read_text()
    for name in ("JobRequest", "JobOut", "Detail", "JobsSubmitErrors"):
        assert f"export type {name} " in types
    assert "200: Blob | File" in types  # images are typed binary, not dropped


def test_the_document_is_served_and_valid(server: str) -> None:
    from openapi_spec_validator import validate

    document = httpx.get(f"{server}/openapi.json", timeout=10).json()
    validate(document)
