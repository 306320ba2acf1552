"""Real weights in one command: the public files the README names, fetched, checked,
converted and written into the settings the next ``make run`` reads.

The fetching is :mod:`pooch`'s (a maintained fetcher: temporary file in the target
folder, checksum, then an atomic move, so a refused or failed download never leaves
a file under the final name). What it lacks, resuming, is :class:`ResumingDownloader`:
bytes received are kept in ``<name>.part`` and a later pull asks only for the rest
(HTTP ``Range``, guarded by ``If-Range`` so a file changed on the server starts over).

Where the publisher gives a checksum (OpenAI puts the SHA-256 in its CLIP URLs) the
download must match it; for the others the SHA-256 is printed and recorded in
``SHA256SUMS`` beside the files, so a later pull (or a person) can compare.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

from ml_backend.text import parse_decimal

__all__ = ["CATALOG", "ENV_BLOCK_END", "ENV_BLOCK_START", "ChecksumMismatch",
           "DownloadInterrupted", "DownloadRefused", "PublicWeights", "PulledWeights",
           "ResumingDownloader", "fetch", "pull", "sha256_of", "write_env_block"]

log = logging.getLogger(__name__)

ENV_BLOCK_START: Final = "# >>> clipgan models pull (managed block: the command rewrites it)"
ENV_BLOCK_END: Final = "# <<< clipgan models pull"
_CHUNK = 1 << 20
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class PublicWeights:
    """One public file: where its publisher serves it and which setting it fills."""

    name: str                  # what ``clipgan models pull NAME`` takes
    url: str                   # the publisher's address
    filename: str              # as stored (and as asked of a mirror: ``<base>/<filename>``)
    setting: str               # the CLIPGAN_* variable that points at the result
    description: str
    max_bytes: int = 1 << 30   # more than this is not the file (an endless or wrong body)
    sha256: str | None = None  # the publisher's checksum, where it gives one
    convert_to: str | None = None  # a generator: converted to clipgan safetensors, this name


CATALOG: Final[dict[str, PublicWeights]] = {w.name: w for w in (
    PublicWeights(
        name="tadne",
        url=("https://huggingface.co/public-data/TADNE/resolve/main/models/"
             "aydao-anime-danbooru2019s-512-5268480.pt"),
        filename="aydao-anime-danbooru2019s-512-5268480.pt",
        setting="CLIPGAN_GENERATOR_CHECKPOINT", convert_to="tadne.safetensors",
        max_bytes=640 << 20,
        description="This Anime Does Not Exist (aydao), rosinality port: 512 px anime "
                    "StyleGAN2, ~470 MB"),
    PublicWeights(
        name="clip-vit-b32",
        url=("https://openaipublic.azureedge.net/clip/models/"
             "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
        filename="ViT-B-32.pt",
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        setting="CLIPGAN_CLIP_CHECKPOINT", max_bytes=448 << 20,
        description="OpenAI CLIP ViT-B/32: the guidance model, ~340 MB"),
    PublicWeights(
        name="realesrgan-anime",
        url=("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/"
             "RealESRGAN_x4plus_anime_6B.pth"),
        filename="RealESRGAN_x4plus_anime_6B.pth",
        setting="CLIPGAN_UPSCALER_CHECKPOINT", max_bytes=64 << 20,
        description="Real-ESRGAN x4plus anime 6B: upscale 2/4, ~18 MB"),
)}


class DownloadInterrupted(Exception):
    """The connection ended (or the call ran out of time) before the whole file came;
    what came is kept to resume."""


class DownloadRefused(Exception):
    """The server's answer is not a file we take: too large, compressed, redirected away
    from http(s); nothing is kept."""


class ChecksumMismatch(ValueError):
    """The file does not match the checksum its publisher gives; nothing is kept."""


class ResumingDownloader:
    """A pooch downloader that keeps what it received in ``part`` and resumes from it.

    Called by pooch with a temporary output path; on a complete download the part
    file becomes that path (a rename in the same folder), and pooch checks the hash
    before moving it to the final name.

    Bounded like every outbound call: at most ``max_bytes`` in the file (a larger
    ``Content-Length`` is refused before a byte is read, and an endless body at the
    bound), no compressed body (asked for none, refused if sent anyway, and never
    decompressed: a small gzip cannot become a large file), redirects only to http(s)
    and at most ``_MAX_REDIRECTS`` of them, and ``deadline_s`` for the whole call (the
    bytes received by then are kept: the next pull resumes).
    """

    def __init__(self, part: Path, *, max_bytes: int, timeout_s: float = 30.0,
                 deadline_s: float = 3600.0,
                 progress: Callable[[int, int | None], None] | None = None) -> None:
        self.part = part
        self.validator = part.with_name(part.name + ".validator")  # ETag or Last-Modified
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.progress = progress

    def _refuse(self, reason: str) -> DownloadRefused:
        self.part.unlink(missing_ok=True)
        self.validator.unlink(missing_ok=True)
        return DownloadRefused(reason)

    def _get(self, url: str, headers: dict[str, str]) -> Any:
        """GET with redirects followed by hand: each target must be http(s)."""
        import requests

        for _ in range(_MAX_REDIRECTS + 1):
            scheme = urlsplit(url).scheme
            if scheme not in ("http", "https"):
                raise self._refuse(f"redirected to a {scheme or 'relative'}: address; only "
                                   "http and https are followed")
            response = requests.get(url, headers=headers, stream=True, timeout=self.timeout_s,
                                    allow_redirects=False)
            if not response.is_redirect:
                return response
            url = urljoin(url, response.headers.get("Location", ""))
            response.close()
        raise self._refuse(f"more than {_MAX_REDIRECTS} redirects")

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False,
                 ) -> bool | None:
        import requests

        if check_only:
            return bool(requests.head(url, timeout=self.timeout_s, allow_redirects=False).ok)
        deadline = time.monotonic() + self.deadline_s
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if self.validator.exists():
                headers["If-Range"] = self.validator.read_text().strip()
        with self._get(url, headers) as r:
            if have and r.status_code == 416:  # nothing left to send: the part is whole
                r.close()
            else:
                r.raise_for_status()
                encoding = r.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise self._refuse(f"the server sent the file {encoding}-encoded though "
                                       "asked not to; it is not decompressed")
                if r.status_code != 206:
                    have = 0  # the server sent the whole file (or it changed): start over
                length = parse_decimal(r.headers.get("Content-Length", ""))
                total = have + length if length is not None else None
                if total is not None and total > self.max_bytes:
                    raise self._refuse(f"{total} bytes announced, more than the "
                                       f"{self.max_bytes} this file can be")
                validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
                if validator:
                    self.validator.write_text(validator)
                received = have
                try:
                    with open(self.part, "ab" if have else "wb") as out:
                        # read1: what has arrived, up to a chunk (a full-chunk read would
                        # wait for a trickling server for ever, deadline or not)
                        while chunk := r.raw.read1(_CHUNK, decode_content=False):
                            received += len(chunk)
                            if received > self.max_bytes:
                                break
                            out.write(chunk)
                            if self.progress is not None:
                                self.progress(received, total)
                            if time.monotonic() > deadline:
                                raise DownloadInterrupted(
                                    f"not done within {self.deadline_s:g} s; {received} bytes "
                                    f"kept in {self.part.name}")
                except (requests.RequestException, OSError, urllib3_errors()) as exc:
                    raise DownloadInterrupted(f"{received} bytes kept in {self.part.name}") \
                        from exc
                if received > self.max_bytes:
                    raise self._refuse(f"more than {self.max_bytes} bytes sent; this file "
                                       "is smaller")
                if total is not None and received < total:
                    raise DownloadInterrupted(
                        f"{received} of {total} bytes kept in {self.part.name}")
        os.replace(self.part, output_file)
        self.validator.unlink(missing_ok=True)
        return None


def urllib3_errors() -> type[Exception]:
    """urllib3's base error (what ``raw.read1`` raises on a cut connection)."""
    from urllib3.exceptions import HTTPError

    return HTTPError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(weights: PublicWeights, folder: Path, *, base_url: str | None = None,
          progress: Callable[[int, int | None], None] | None = None,
          deadline_s: float = 3600.0) -> Path:
    """The file, downloaded into ``folder`` unless it is already there (and matches the
    publisher's checksum, where there is one). ``base_url``: a mirror serving
    ``<base_url>/<filename>`` instead of the publisher.

    Raises :class:`DownloadInterrupted` (run again to resume), :class:`DownloadRefused`
    (not a file we take) or :class:`ChecksumMismatch`; after the last two nothing is kept.
    """
    import pooch

    folder.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{weights.filename}" if base_url else weights.url
    part = folder / f"{weights.filename}.part"
    downloader = ResumingDownloader(part, max_bytes=weights.max_bytes, progress=progress,
                                    deadline_s=deadline_s)
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{weights.sha256}" if weights.sha256
                              else None, fname=weights.filename, path=folder,
                              downloader=downloader)
    except ValueError as exc:  # pooch's word for a hash that does not match
        part.unlink(missing_ok=True)  # the bytes were wrong: never resume from them
        downloader.validator.unlink(missing_ok=True)
        raise ChecksumMismatch(str(exc).splitlines()[0]) from None
    return Path(path)


@dataclass(frozen=True)
class PulledWeights:
    weights: PublicWeights
    downloaded: Path      # the file as published
    sha256: str           # of the downloaded file
    verified: bool        # against the publisher's checksum
    result: Path          # what the setting names (converted, for a generator)


def pull(weights: PublicWeights, folder: Path, *, base_url: str | None = None,
         progress: Callable[[int, int | None], None] | None = None) -> PulledWeights:
    """Fetch, record the SHA-256, and convert a generator to clipgan's safetensors."""
    downloaded = fetch(weights, folder, base_url=base_url, progress=progress)
    digest = sha256_of(downloaded)
    _record_sha256(folder, downloaded.name, digest)
    result = downloaded
    if weights.convert_to is not None:
        from ml_backend.weights import convert_checkpoint

        result = folder / weights.convert_to
        if not result.exists() or result.stat().st_mtime < downloaded.stat().st_mtime:
            tmp = result.with_name(result.name + ".tmp")
            convert_checkpoint(downloaded, tmp)
            os.replace(tmp, result)
    return PulledWeights(weights, downloaded, digest, weights.sha256 is not None,
                         result.resolve())


def _record_sha256(folder: Path, filename: str, digest: str) -> None:
    sums = folder / "SHA256SUMS"
    lines = [line for line in (sums.read_text().splitlines() if sums.exists() else [])
             if not line.endswith(f"  {filename}")]
    sums.write_text("".join(f"{line}\n" for line in [*lines, f"{digest}  {filename}"]))


_ENV_LINE = re.compile(r"^(CLIPGAN_[A-Z0-9_]+)=(.*)$")


def write_env_block(env_file: Path, settings: Iterable[tuple[str, str]]) -> None:
    """Set these variables in the managed block of ``env_file`` (created when missing),
    keeping the block's other variables and everything outside it."""
    text = env_file.read_text() if env_file.exists() else ""
    before, block, after = text, "", ""
    if ENV_BLOCK_START in text and ENV_BLOCK_END in text:
        before, rest = text.split(ENV_BLOCK_START, 1)
        block, after = rest.split(ENV_BLOCK_END, 1)
    values: dict[str, str] = {}
    for line in block.splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    values.update(settings)
    body = "".join(f"{name}={value}\n" for name, value in values.items())
    if before and not before.endswith("\n"):
        before += "\n"
    env_file.write_text(f"{before}{ENV_BLOCK_START}\n{body}{ENV_BLOCK_END}{after or chr(10)}")
