"""`clipgan serve` (what `make run` starts): a working service that survives a restart."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, start_serve, stop_serve

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc: no extra dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids still running (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _sign_in(base: str, username: str) -> dict[str, str]:
    token = httpx.post(f"{base}/v1/auth/token",
                       data={"username": username, "password": "password123"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def _wait_done(base: str, job_id: str, auth: dict[str, str], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.25)
    raise AssertionError(f"job never finished: {state}")


def test_make_run_serves_on_local_ray_and_keeps_everything_across_restarts(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp_path, port, generator="ray")
    try:
        httpx.post(f"{base}/v1/users", json={"username": "alice", "email": "a@x.io",
                                             "password": "password123"}).raise_for_status()
        auth = _sign_in(base, "alice")
        job = httpx.post(f"{base}/v1/jobs", json={"prompt": "smile", "steps": 4, "seed": 1},
                         headers=auth).json()
        state = _wait_done(base, job["id"], auth)
        assert state["status"] == "succeeded", state
        picture = httpx.get(base + state["image_url"]).content
        assert picture.startswith(b"\x89PNG")
        models = httpx.get(f"{base}/v1/models").json()["models"]
        assert models["default"]["demo_weights"] is True
        long_job = httpx.post(f"{base}/v1/jobs", json={"prompt": "cat", "steps": 400,
                                                       "seed": 2}, headers=auth).json()
        for _ in range(400):
            running = httpx.get(f"{base}/v1/jobs/{long_job['id']}", headers=auth).json()
            if running["progress"]["step"] >= 2:
                break
            time.sleep(0.1)
        assert running["status"] == "running", running
        ray_processes = _descendants(proc.pid)
        assert len(ray_processes) >= 3, "expected a local Ray (gcs, raylet, workers)"
    finally:
        out = stop_serve(proc)  # Ctrl-C in the middle of the long job
    assert f"clipgan is running at http://127.0.0.1:{port}" in out
    assert "model 'default': UNTRAINED DEMO WEIGHTS" in out  # though the replica logs elsewhere
    deadline = time.time() + 30
    while _alive(ray_processes) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_processes), "Ctrl-C left Ray processes behind"

    proc = start_serve(tmp_path, port, generator="ray")  # same data dir: same users and jobs
    try:
        auth = _sign_in(base, "alice")
        again = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth).json()
        assert again["status"] == "succeeded"
        assert httpx.get(base + again["image_url"]).content == picture
        resumed = _wait_done(base, long_job["id"], auth, timeout=240)
        assert resumed["status"] == "succeeded", resumed  # interrupted, handed back, finished
    finally:
        stop_serve(proc)


def test_client_commands_and_the_example_bot_outlive_access_tokens(tmp_path: Path) -> None:
    """Access tokens live 2 s here: the bot, on an API key, answers every prompt sent over
    several token lifetimes, and a client signed in with a password keeps refreshing."""
    from clipgan.client import ClipganClient

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp_path, port, access_token_ttl_s="2")
    try:
        httpx.post(f"{base}/v1/users", json={"username": "bot", "email": "bot@x.io",
                                             "password": "password123"}).raise_for_status()
        env = {**os.environ, "CLIPGAN_URL": base, "CLIPGAN_USERNAME": "bot",
               "CLIPGAN_PASSWORD": "password123", "BOT_OUTPUT": str(tmp_path / "bot")}
        env.pop("CLIPGAN_API_KEY", None)
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
        made = subprocess.run([sys.executable, "-m", "clipgan.cli", "keys", "create", "bot"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        bot_env = {**env, "CLIPGAN_API_KEY": key, "CLIPGAN_PASSWORD": "not needed"}
        bot = subprocess.Popen([sys.executable, "examples/chat_bot.py"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=bot_env, cwd=Path(__file__).resolve().parents[2])
        assert bot.stdin is not None
        # a chat message with a LINE SEPARATOR once ended the bot (its client split the
        # event stream there)
        for line in ("!anime cat\u2028ears", "!sample Asuka", "!anime smile", "!anime hat"):
            bot.stdin.write(line + "\n")
            bot.stdin.flush()
            time.sleep(2.5)  # more than a token's lifetime between prompts
        stdout, stderr = bot.communicate(timeout=180)
        assert bot.returncode == 0, stderr
        lines = stdout.strip().split("\n")
        assert len(lines) == 4 and not [line for line in lines if line.startswith("sorry")], \
            stdout
        assert lines[0].startswith("'cat\u2028ears' (seed ")
        assert lines[1].startswith("here is Asuka")
        client = ClipganClient(base)  # a password, refreshed as tokens end
        client.sign_in("bot", "password123")
        for _ in range(3):
            job = client.submit({"prompt": "smile", "steps": 1})
            assert job["status"] == "queued"
            time.sleep(2.2)
        client.cancel(job["id"])  # cancelled, or it ended first: either way it stays
        ended = _wait_done(base, job["id"], {"Authorization": "Bearer " + key}, timeout=120)
        assert client.cancel(job["id"])["deleted"] is False
        assert client.delete(job["id"])["deleted"] is True
        assert httpx.get(f"{base}/v1/jobs/{job['id']}",
                         headers={"Authorization": "Bearer " + key}).status_code == 404
        assert ended["status"] in ("cancelled", "succeeded")
        listed = subprocess.run([sys.executable, "-m", "clipgan.cli", "keys", "list"],
                                capture_output=True, text=True, env=env, timeout=60)
        assert listed.returncode == 0 and key not in listed.stdout
        assert '"name": "bot"' in listed.stdout
    finally:
        stop_serve(proc)
