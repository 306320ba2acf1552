"""What kind of weights file this is, and reading its tensors without running code.

Every loader (generator, CLIP, upscaler) starts here, so the format is always
sniffed from the file's first bytes, never trusted from its name, and every
problem with any weights file is one :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["CheckpointError", "FileFormat", "load_torch", "read_state_dict", "sniff"]

FileFormat = Literal["safetensors", "torch-zip", "torch-legacy", "torchscript", "pickle"]

_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic long of old torch.save
_MAX_SAFETENSORS_HEADER = 100_000_000


class CheckpointError(Exception):
    """A weights file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *,
                 what: str = "checkpoint") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load {what} {self.path}: {reason}")


def sniff(path: Path, *, what: str = "checkpoint") -> FileFormat:
    """The file's format from its first bytes; refuses missing files and unknown kinds."""
    if not path.exists():
        raise CheckpointError(path, "no such file", what=what)
    if not path.is_file():
        raise CheckpointError(path, "not a regular file", what=what)
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except Exception as exc:  # zipfile raises many types on a malformed directory
            detail = (str(exc).splitlines() or [""])[0][:200]
            raise CheckpointError(path, f"truncated or corrupt zip archive "
                                        f"({type(exc).__name__}: {detail})", what=what) from None
        return "torchscript" if any("/code/" in n for n in names) else "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-legacy" if head[2:14] == _LEGACY_TORCH_MAGIC else "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len < _MAX_SAFETENSORS_HEADER:
            return "safetensors"
    raise CheckpointError(path, "not a recognised weights file (expected safetensors, a "
                                "torch.save file or an NVIDIA network pickle)", what=what)


def load_torch(path: Path, *, what: str = "checkpoint", allowed: list[Any] | None = None,
               ) -> Any:
    """``torch.load`` with the weights-only unpickler: tensors and plain containers only.

    ``allowed`` adds harmless classes (rosinality training snapshots store their
    argparse arguments). A file that names anything else is refused, nothing runs.
    """
    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe loader refused a global: the file tries to build more than tensors.
        lines = [ln.strip() for ln in str(exc).splitlines() if "global" in ln.lower()]
        first = lines[0] if lines else (str(exc).splitlines() or ["refused"])[0]
        raise CheckpointError(path, f"refused by the weights-only loader: {first}",
                              what=what) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(path, f"truncated or corrupt torch file "
                                    f"({type(exc).__name__}: {first})", what=what) from None


def read_state_dict(path: Path, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from safetensors, a torch file or a TorchScript archive.

    TorchScript archives (OpenAI's CLIP releases) hold compiled code and tensors; only
    the tensors are read (:mod:`~ml_backend.weights.torchscript`), the code never runs.
    """
    kind = sniff(path, what=what)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(path, f"truncated or corrupt safetensors file ({exc})",
                                  what=what) from None
    if kind == "torchscript":  # its tensors only: the archive's code is never run
        from ml_backend.weights.torchscript import read_torchscript_tensors

        try:
            return read_torchscript_tensors(path)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(path, f"unreadable TorchScript archive ({exc})",
                                  what=what) from None
    if kind == "pickle":
        raise CheckpointError(path, "a plain pickle is not a weights file this loader reads",
                              what=what)
    data = load_torch(path, what=what)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor)
                                             for v in data.values()):
        raise CheckpointError(path, "file holds no state dict of tensors", what=what)
    return data
