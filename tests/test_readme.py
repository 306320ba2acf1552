"""The README's commands, run as written by a newcomer in a fresh directory.

Each block is taken from README.md by its section heading, so an edit to the README
that breaks a command breaks this test. The only change made to the text is the
port, when the walk-throughs talk to the server the test started.
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, start_serve, stop_serve

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
PASSWORD = "a long password"


def readme_blocks(section: str, language: str) -> list[str]:
    """The fenced ``language`` blocks under the ``## section`` heading."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise AssertionError(f"README has no section {section!r}")
    blocks = re.findall(rf"^```{language}\n(.*?)^```", match.group(1), re.M | re.S)
    if not blocks:
        raise AssertionError(f"README section {section!r} has no {language} block")
    return blocks


@pytest.fixture
def newcomer_dir(tmp_path: Path) -> Path:
    """A directory laid out like a fresh clone after ``make``: ``.venv`` is this venv."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "tools").symlink_to(README.parent / "tools")
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def run_shell(block: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_make_a_picture_from_the_command_line(newcomer_dir: Path) -> None:
    (block,) = readme_blocks("Make a picture from the command line", "sh")
    run_shell(block, newcomer_dir)
    for name in ("out.png", "me.png", "asuka.png"):
        assert is_png(newcomer_dir / name), name


@pytest.mark.parametrize("section", ["In-process Python API", "Ray Serve (developers)"])
def test_python_snippets(newcomer_dir: Path, section: str) -> None:
    (block,) = readme_blocks(section, "python")
    done = subprocess.run([sys.executable, "-c", block], cwd=newcomer_dir, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def running_server(newcomer_dir: Path) -> Iterator[str]:
    """``make run`` in another terminal (the in-process generator: same API, faster)."""
    port = free_port()
    proc = start_serve(newcomer_dir / "data", port)
    try:
        yield f"{port}"
    finally:
        stop_serve(proc)


def _on_port(block: str, port: str) -> str:
    return block.replace("localhost:8000", f"localhost:{port}").replace(
        "127.0.0.1:8000", f"127.0.0.1:{port}")


def test_api_walkthrough_then_the_client(newcomer_dir: Path, running_server: str) -> None:
    port = running_server
    walkthrough = next(b for b in readme_blocks("The account backend (REST API)", "sh")
                       if "curl" in b)
    done = run_shell(_on_port(walkthrough, port), newcomer_dir,
                     CLIPGAN_NEW_PASSWORD=PASSWORD)
    events = re.findall(r"event: (\w+)", done.stdout)  # curl's JSON ends with no newline
    assert events[0] == "status" and events[-1] == "done", events
    assert "progress" in events and "preview" in events
    assert is_png(newcomer_dir / "asuka.png")

    token = httpx.post(f"http://127.0.0.1:{port}/v1/auth/token",
                       data={"username": "alice", "password": PASSWORD}).json()
    jobs = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={
        "Authorization": f"Bearer {token['access_token']}"}).json()["items"]
    assert len(jobs) == 2 and jobs[1]["request"]["seed"] == "Asuka"

    (client,) = readme_blocks("Talking to a running server", "sh")
    run_shell(_on_port(client, port), newcomer_dir, CLIPGAN_PASSWORD=PASSWORD)
    assert is_png(newcomer_dir / "out.png") and is_png(newcomer_dir / "asuka.png")

    (keys,) = readme_blocks("Keys for programs", "sh")
    done = run_shell(_on_port(keys, port) + '\necho "KEY=$KEY"', newcomer_dir,
                     CLIPGAN_PASSWORD=PASSWORD)
    key = done.stdout.rsplit("KEY=", 1)[1].strip()
    assert key.startswith("cgk_") and is_png(newcomer_dir / "rei.png")
    assert '"name": "chat bot"' in done.stdout and key not in done.stdout.split("KEY=")[0]
    (openai_example,) = readme_blocks("Use clipgan from OpenAI clients", "python")
    done = subprocess.run([sys.executable, "-c", _on_port(openai_example, port)],
                          cwd=newcomer_dir, env=_env(CLIPGAN_API_KEY=key),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert is_png(newcomer_dir / "openai.png") and "default" in done.stdout


def test_generated_client_example(newcomer_dir: Path, running_server: str) -> None:
    port = running_server
    httpx.post(f"http://127.0.0.1:{port}/v1/users", json={
        "username": "alice", "email": "alice@example.com", "password": PASSWORD,
    }).raise_for_status()
    section = "Client libraries and the OpenAPI document"
    (generate,) = readme_blocks(section, "sh")
    run_shell(_on_port(generate, port), newcomer_dir)
    (example,) = readme_blocks(section, "python")
    done = subprocess.run([sys.executable, "-c", _on_port(example, port)], cwd=newcomer_dir,
                          env=_env(CLIPGAN_PASSWORD=PASSWORD, PYTHONPATH="sdk/python"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert is_png(newcomer_dir / "typed.png")
