"""Real-ESRGAN RRDBNet x4 weights (``RealESRGAN_x4plus_anime_6B.pth`` and its family).

The released ``.pth`` stores the weights under ``params_ema``; block count and widths
are read from the state dict, so other RRDBNet x4 checkpoints of the family load too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ml_backend.upscale import RRDBNet
from ml_backend.weights.formats import CheckpointError, load_torch, sniff

__all__ = ["load_rrdbnet"]

_WHAT = "upscaler"


def load_rrdbnet(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                 ) -> RRDBNet:
    path = Path(path)
    if sniff(path, what=_WHAT) not in ("torch-zip", "torch-legacy"):
        raise CheckpointError(path, "not a torch.save file", what=_WHAT)
    data = load_torch(path, what=_WHAT)
    if isinstance(data, dict):
        data = data.get("params_ema", data.get("params", data))
    if not isinstance(data, dict) or "conv_first.weight" not in data:
        raise CheckpointError(path, "no RRDBNet weights (expected 'params_ema' with "
                                    "conv_first.*)", what=_WHAT)
    blocks = {int(m[1]) for k in data if (m := re.match(r"body\.(\d+)\.", k))}
    try:
        model = RRDBNet(num_block=len(blocks), num_feat=data["conv_first.weight"].shape[0],
                        num_grow_ch=data["body.0.rdb1.conv1.weight"].shape[0])
        model.load_state_dict(data, strict=True)
    except (KeyError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(path, f"weights do not fit an x4 RRDBNet: {exc}",
                              what=_WHAT) from None
    return model.to(device).eval().requires_grad_(False)
