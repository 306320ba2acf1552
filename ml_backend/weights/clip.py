"""CLIP from a local file: any OpenAI CLIP size, dims inferred from the state dict.

The model itself is the ``clip`` package's own code (``clip.model.build_model``);
this module only reads weights, without the stock unpickler: safetensors, a
weights-only ``torch.load``, or the TorchScript archives OpenAI released.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch

from ml_backend.weights.formats import CheckpointError, read_state_dict

__all__ = ["ClipModel", "import_clip", "load_clip"]

_WHAT = "CLIP checkpoint"


class ClipModel(Protocol):
    """What guidance uses of ``clip.model.CLIP`` (the package ships no type hints)."""

    visual: Any                             # .input_resolution, .conv1.weight
    context_length: int
    text_projection: torch.Tensor           # [width, D]

    def parameters(self) -> Any: ...
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...


def import_clip() -> ModuleType:
    """``clip`` imports the deprecated pkg_resources at import; keep that out of the logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import clip
        import clip.model
        import clip.simple_tokenizer
    return clip


def load_clip(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
              ) -> ClipModel:
    """Build ``clip.model.CLIP`` from a local checkpoint, fp32, frozen, in eval mode."""
    clip = import_clip()
    path = Path(path)
    state_dict = read_state_dict(path, what=_WHAT)
    try:
        model = clip.model.build_model(dict(state_dict))
    except Exception as exc:  # any shape / key failure means "not a usable CLIP file"
        raise CheckpointError(path, f"not a CLIP state dict ({type(exc).__name__}: {exc})",
                              what=_WHAT) from None
    return model.float().to(device).eval().requires_grad_(False)
