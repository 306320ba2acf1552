"""``clipgan models pull``, offline: a local HTTP mirror serves small files under the
public names (``CLIPGAN_MODELS_BASE_URL``), and can send a wrong file or cut a
download halfway, as a flaky network or a tampered mirror would."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from clipgan.model_pull import (
    CATALOG,
    ENV_BLOCK_START,
    DownloadInterrupted,
    DownloadRefused,
    PublicWeights,
    fetch,
    pull,
)
from ml_backend.settings import MLSettings
from ml_backend.weights import read_checkpoint
from tests.ml_backend import builders

CLI = [sys.executable, "-m", "clipgan.cli"]


class Mirror:
    """Files by name over HTTP on 127.0.0.1, with ``Range`` and an ETag like a CDN's.

    ``cut_next``: the next response stops after that many bytes of its body and the
    connection is dropped."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_next: int | None = None
        self.hostile: dict[str, Callable[[Any], None]] = {}  # path -> what it sends instead
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                mirror.requests.append((self.path, self.headers.get("Range")))
                if self.path.lstrip("/") in mirror.hostile:
                    mirror.hostile[self.path.lstrip("/")](self)
                    self.close_connection = True
                    return
                data = mirror.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:16]}"')
                self.end_headers()
                body, cut = data[start:], mirror.cut_next
                if cut is not None:
                    mirror.cut_next = None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def downloads(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _generator_pt(path: Path) -> bytes:
    g = builders.rosinality_generator(size=32, style_dim=32)
    builders.write_rosinality_pt(path, g, torch.randn(32))
    return path.read_bytes()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    files = {
        CATALOG["tadne"].filename: _generator_pt(tmp_path / "g.pt"),
        CATALOG["realesrgan-anime"].filename: os.urandom(3 << 20),
        CATALOG["clip-vit-b32"].filename: os.urandom(1 << 20),  # not OpenAI's: must fail
    }
    server = Mirror(files)
    yield server
    server.close()


def _pull(tmp_path: Path, mirror: Mirror, *names: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPGAN_DATA_DIR": str(tmp_path / "data"),
           "CLIPGAN_MODELS_BASE_URL": mirror.url}
    return subprocess.run([*CLI, "models", "pull", *names, "--env-file",
                           str(tmp_path / ".env")], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pull_converts_records_and_configures_the_next_run(tmp_path: Path,
                                                           mirror: Mirror) -> None:
    (tmp_path / ".env").write_text("CLIPGAN_ENV=dev\n")  # the user's own lines stay
    done = _pull(tmp_path, mirror, "tadne", "realesrgan-anime")
    assert done.returncode == 0, done.stderr
    models = tmp_path / "data" / "models"
    converted = models / "tadne.safetensors"
    assert read_checkpoint(converted).config.img_resolution == 32
    upscaler = CATALOG["realesrgan-anime"].filename
    digest = _sha256(mirror.files[upscaler])
    assert f"{upscaler} sha256 {digest}" in done.stderr.replace("\n", " ")
    assert f"{digest}  {upscaler}" in (models / "SHA256SUMS").read_text()
    env_text = (tmp_path / ".env").read_text()
    assert env_text.startswith("CLIPGAN_ENV=dev\n") and ENV_BLOCK_START in env_text
    settings = MLSettings(_env_file=tmp_path / ".env")  # what the next `make run` reads
    assert settings.generator_checkpoint == converted.resolve()
    assert settings.upscaler_checkpoint == (models / upscaler).resolve()
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["SHA256SUMS", CATALOG["tadne"].filename, "tadne.safetensors", upscaler])

    seen = mirror.downloads()
    again = _pull(tmp_path, mirror, "tadne", "realesrgan-anime")
    assert again.returncode == 0, again.stderr
    assert mirror.downloads() == seen, "what is already here is not downloaded again"
    assert (tmp_path / ".env").read_text() == env_text


def test_a_file_that_fails_the_publishers_checksum_is_refused_and_not_kept(
        tmp_path: Path, mirror: Mirror) -> None:
    refused = _pull(tmp_path, mirror, "clip-vit-b32")
    assert refused.returncode == 2
    assert "does not match the publisher's checksum" in refused.stderr
    assert "Traceback" not in refused.stderr
    models = tmp_path / "data" / "models"
    assert list(models.iterdir()) == [], "no file, part or temporary file is left behind"
    assert not (tmp_path / ".env").exists()
    refused_again = _pull(tmp_path, mirror, "clip-vit-b32")  # and never resumed from
    assert refused_again.returncode == 2
    assert mirror.requests[-1][1] is None


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path: Path,
                                                         mirror: Mirror) -> None:
    name = CATALOG["realesrgan-anime"].filename
    mirror.cut_next = 1 << 20
    interrupted = _pull(tmp_path, mirror, "realesrgan-anime")
    assert interrupted.returncode == 2
    assert "interrupted" in interrupted.stderr and "run the same command again" in (
        interrupted.stderr.replace("\n", " "))
    models = tmp_path / "data" / "models"
    assert not (models / name).exists(), "nothing under the final name until it is whole"
    assert (models / f"{name}.part").stat().st_size == 1 << 20
    resumed = _pull(tmp_path, mirror, "realesrgan-anime")
    assert resumed.returncode == 0, resumed.stderr
    assert mirror.requests[-1] == (f"/{name}", f"bytes={1 << 20}-"), "only the rest was asked"
    assert (models / name).read_bytes() == mirror.files[name]
    assert not (models / f"{name}.part").exists()


def test_a_checksum_given_by_the_publisher_is_checked_on_success_too(
        tmp_path: Path, mirror: Mirror) -> None:
    data = mirror.files[CATALOG["realesrgan-anime"].filename]
    pinned = PublicWeights(name="pinned", url="unused", filename=CATALOG[
        "realesrgan-anime"].filename, setting="CLIPGAN_UPSCALER_CHECKPOINT",
        description="a file whose publisher gives its sha256", sha256=_sha256(data))
    pulled = pull(pinned, tmp_path / "models", base_url=mirror.url)
    assert pulled.verified and pulled.sha256 == _sha256(data)
    assert pulled.result.read_bytes() == data


# --- a hostile mirror: what it sends is bounded, never decompressed, never followed off http

def _endless(handler: Any) -> None:
    """No length, chunk after chunk: a body that never ends."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    block = os.urandom(1 << 16)
    try:
        while True:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
    except OSError:
        pass


def _announce(size: int) -> Callable[[Any], None]:
    def send(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
    return send


def _gzip_bomb(handler: Any) -> None:
    """About 1 MiB on the wire that gunzips to 1 GiB."""
    bomb = gzip.compress(b"\0" * (1 << 20), compresslevel=9) * 1024  # members: 1 GiB
    handler.send_response(200)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(bomb)))
    handler.end_headers()
    handler.wfile.write(bomb)


def _redirect(location: str) -> Callable[[Any], None]:
    def send(handler: Any) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return send


def _trickle(handler: Any) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 20))
    handler.end_headers()
    try:
        for _ in range(1 << 20):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


SMALL = PublicWeights(name="small", url="unused", filename="small.bin", max_bytes=4 << 20,
                      setting="CLIPGAN_UPSCALER_CHECKPOINT", description="at most 4 MiB")


@pytest.mark.parametrize(("send", "says"), [
    (_endless, "more than 4194304 bytes sent"),
    (_announce(5 << 30), "5368709120 bytes announced"),
    (_gzip_bomb, "gzip-encoded"),
    (_redirect("file:///etc/passwd"), "redirected to a file: address"),
    (_redirect("ftp://example.com/x"), "redirected to a ftp: address"),
], ids=["endless", "too-long", "gzip-bomb", "file-redirect", "ftp-redirect"])
def test_a_hostile_mirror_is_refused_and_leaves_nothing(tmp_path: Path, mirror: Mirror,
                                                        send: Any, says: str) -> None:
    mirror.hostile["small.bin"] = send
    folder = tmp_path / "models"
    with pytest.raises(DownloadRefused, match=says):
        fetch(SMALL, folder, base_url=mirror.url)
    assert list(folder.iterdir()) == [], "no file, part or temporary file is left behind"


def test_a_redirect_to_http_is_followed(tmp_path: Path, mirror: Mirror) -> None:
    name = CATALOG["realesrgan-anime"].filename
    mirror.hostile["small.bin"] = _redirect(f"{mirror.url}/{name}")
    assert fetch(SMALL, tmp_path, base_url=mirror.url).read_bytes() == mirror.files[name]


def test_a_download_has_a_deadline_and_resumes_after_it(tmp_path: Path, mirror: Mirror) -> None:
    mirror.hostile["small.bin"] = _trickle
    with pytest.raises(DownloadInterrupted, match="not done within 1 s"):
        fetch(SMALL, tmp_path, base_url=mirror.url, deadline_s=1)
    assert 0 < (tmp_path / "small.bin.part").stat().st_size < 1 << 20  # kept to resume


def test_the_command_says_what_was_refused(tmp_path: Path, mirror: Mirror) -> None:
    """A redirect off http(s) is not reported as a checksum mismatch."""
    mirror.hostile[CATALOG["clip-vit-b32"].filename] = _redirect("file:///etc/passwd")
    refused = _pull(tmp_path, mirror, "clip-vit-b32")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "refused, redirected to a file: address" in refused.stderr.replace("\n", " ")
    assert "checksum" not in refused.stderr
