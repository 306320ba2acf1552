"""Numeric precision of the search: which parts may run in 16 bits and which may not.

Why a policy and not ``.half()``: one search step is the generator and CLIP, forward
and backward, about 1.5-2.3 TFLOP per job at TADNE size. In fp32 a GPU runs that
far below its tensor-core rate; under bf16 autocast the convolutions and matmuls of
both networks run at that rate while everything whose rounding would accumulate
stays fp32: the latent ``q``, the optimiser state, its EMA, the loss and its
reduction, the final render and its score. fp16 (for GPUs without bf16) has a
narrow range, so its gradients are loss-scaled.

On CPU the default stays fp32 (bf16 is slower than fp32 on most CPUs), but the bf16
path runs there too, which is how CI tests its numerics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ml_backend.settings import PrecisionSetting

__all__ = ["PRECISIONS", "Precision", "PrecisionName"]

log = logging.getLogger(__name__)

PrecisionName = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[PrecisionSetting, ...] = get_args(PrecisionSetting)

_DTYPES: dict[PrecisionName, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How the search step and candidate scoring compute on one device."""

    name: PrecisionName
    device_type: str                     # "cpu" or "cuda": the autocast device

    @classmethod
    def resolve(cls, setting: PrecisionSetting, device: str | torch.device) -> Precision:
        """``auto``: bf16 on a CUDA device that has it, fp16 on one that does not, fp32 on CPU."""
        device_type = torch.device(device).type
        if setting not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {setting!r}")
        if setting != "auto":
            return cls(setting, device_type)
        if device_type != "cuda":
            return cls("fp32", device_type)
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls("bf16" if bf16 else "fp16", device_type)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        """True when the fast path computes in 16 bits (and autocast is on)."""
        return self.name != "fp32"

    @property
    def needs_loss_scaling(self) -> bool:
        """fp16's smallest normal is 6e-5: small gradients would flush to zero unscaled."""
        return self.name == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The fast path: generator and CLIP forward (and so their backward) in 16 bits."""
        if not self.reduced:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A dynamic loss scaler for fp16, None otherwise (bf16 has fp32's range)."""
        if not self.needs_loss_scaling:
            return None
        return torch.amp.GradScaler(self.device_type)

    def configure_device(self) -> None:
        """TF32 for the matmuls that stay fp32 under a 16-bit policy (CUDA only).

        Process-wide, so it is set once at replica start; the fp32 policy leaves
        torch's defaults alone: that is the reference path.
        """
        if self.device_type == "cuda" and self.reduced:
            # cuDNN convolutions already default to TF32; matmuls default to IEEE fp32
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        log.info("search precision %s on %s%s", self.name, self.device_type,
                 " (TF32 for fp32 matmuls)" if self.device_type == "cuda" and self.reduced
                 else "")
