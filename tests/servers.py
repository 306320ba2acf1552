"""Real server processes for the tests: a free port, start, wait until ready, Ctrl-C."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLUSTER_SECRET = secrets.token_hex(32)  # the ingress secret of the test Ray cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, *, path: str = "/readyz",
               timeout: float = 180) -> None:
    """Until ``base + path`` answers 200; a process that dies first fails with its output."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else "(output in its log file)"
            raise AssertionError(f"server exited during start: {output}")
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"server at {base} did not become ready")


def start_serve(data_dir: Path, port: int, generator: str = "in-process",
                **settings: str) -> subprocess.Popen:
    """``clipgan serve`` in its own session, as a terminal would run it.

    Tests about the web side use the in-process generator (starts in ~6 s); the
    tests of what ``make run`` does use the default private local Ray. ``settings``:
    ``CLIPGAN_*`` variables, without the prefix.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPGAN_")}
    env.update(CLIPGAN_DATA_DIR=str(data_dir), RAY_USAGE_STATS_ENABLED="0",
               **{f"CLIPGAN_{name.upper()}": value for name, value in settings.items()})
    proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "serve", "--port", str(port),
                             "--generator", generator], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc


def stop_serve(proc: subprocess.Popen) -> str:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-5000:]
    assert "Traceback" not in out, out
    return out


class S3Server:
    """moto's S3 server (an emulator of the S3 protocol over real HTTP, not AWS) in a
    subprocess: what the tests of ``S3BlobStore`` and of several web nodes talk to."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "S3Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise AssertionError("moto's S3 server exited during start") from None
                time.sleep(0.2)
        self.stop()
        raise AssertionError("moto's S3 server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """The server stops answering (its connections stay open): a hung store."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def new_bucket(self) -> str:
        """A fresh, empty bucket; returns its name."""
        name = f"clipgan-{secrets.token_hex(6)}"
        response = httpx.put(f"{self.endpoint}/{name}", timeout=10)
        assert response.status_code == 200, response.text
        return name

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (and ``clipgan web``) here."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "clipgan-test", "AWS_SECRET_ACCESS_KEY": "clipgan-test"}

    def config(self) -> dict[str, str]:
        """The same as ``S3BlobStore`` keyword settings."""
        return {"endpoint": self.endpoint, "region": "us-east-1",
                "access_key_id": "clipgan-test", "secret_access_key": "clipgan-test"}
