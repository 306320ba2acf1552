"""`clipgan serve` (what `make run` starts): a working service that survives a restart."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
    env.update(CLIPGAN_DATA_DIR=str(data_dir), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("clipgan serve did not become ready")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_serve_makes_pictures_and_keeps_them_across_restarts(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port)
    try:
        httpx.post(f"{base}/v1/users", json={"username": "alice", "email": "a@x.io",
                                             "password": "password123"}).raise_for_status()
        token = httpx.post(f"{base}/v1/auth/token",
                           data={"username": "alice", "password": "password123"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        job = httpx.post(f"{base}/v1/jobs", json={"prompt": "smile", "steps": 4, "seed": 1},
                         headers=auth).json()
        for _ in range(240):
            state = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth).json()
            if state["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.25)
        assert state["status"] == "succeeded", state
        picture = httpx.get(base + state["image_url"]).content
        assert picture.startswith(b"\x89PNG")
        models = httpx.get(f"{base}/v1/models").json()["models"]
        assert models["default"]["demo_weights"] is True
    finally:
        out = _stop(proc)
    assert f"clipgan is running at http://127.0.0.1:{port}" in out
    proc = _start(tmp_path, port)  # same data dir: same users, same jobs
    try:
        token = httpx.post(f"{base}/v1/auth/token",
                           data={"username": "alice", "password": "password123"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        again = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth).json()
        assert again["status"] == "succeeded"
        assert httpx.get(base + again["image_url"]).content == picture
    finally:
        _stop(proc)


def test_client_commands_and_the_example_bot(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port)
    try:
        httpx.post(f"{base}/v1/users", json={"username": "bot", "email": "bot@x.io",
                                             "password": "password123"}).raise_for_status()
        env = {**os.environ, "CLIPGAN_URL": base, "CLIPGAN_USERNAME": "bot",
               "CLIPGAN_PASSWORD": "password123", "BOT_OUTPUT": str(tmp_path / "bot")}
        out = tmp_path / "girl.png"
        done = subprocess.run([sys.executable, "-m", "clipgan.cli", "client", "generate",
                               "blue hair", "--steps", "3", "--seed", "5", "-o", str(out)],
                              capture_output=True, text=True, env=env, timeout=180)
        assert done.returncode == 0, done.stderr
        assert "seed 5" in done.stderr and out.read_bytes().startswith(b"\x89PNG")
        bad = subprocess.run([sys.executable, "-m", "clipgan.cli", "client", "generate", "x",
                              "--steps", "0"], capture_output=True, text=True, env=env,
                             timeout=60)
        assert bad.returncode == 2 and "422" in bad.stderr and "Traceback" not in bad.stderr
        bot = subprocess.run([sys.executable, "examples/chat_bot.py"], input=(
            "!anime cat ears\n!sample Asuka\n"), capture_output=True, text=True, env=env,
            timeout=180, cwd=Path(__file__).resolve().parents[2])
        assert bot.returncode == 0, bot.stderr
        lines = bot.stdout.strip().splitlines()
        assert lines[0].startswith("'cat ears' (seed ") and lines[1].startswith("here is Asuka")
    finally:
        _stop(proc)
