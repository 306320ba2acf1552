"""FLOP accounting for the benches: counted by torch, compared with the GPU's peak.

Why counted and not estimated: the FLOPs of a search step depend on the generator's
layout, CLIP's size, the cutout count and the batch; torch's ``FlopCounterMode``
counts every matmul and convolution actually dispatched, forward and backward, so a
change to any of them shows up in the figures without anyone re-deriving a formula.
Elementwise work (activations, normalisation, the optimiser) is not counted: on a
GPU it is bandwidth, not tensor-core work, so "% of peak" is of the part that can
reach peak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["DENSE_BF16_PEAK_TFLOPS", "count_flops", "describe_rate", "peak_tflops"]

# Dense (no sparsity) bf16 tensor-core peak with fp32 accumulation, from each vendor
# datasheet (sparse figures halved). Matched against torch.cuda.get_device_name(),
# most specific first. A10G: AWS publishes no datasheet; the commonly cited figure.
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),            # SXM
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)


def peak_tflops(device: str | torch.device) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak in TFLOP/s (None: not in the table)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, tflops in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return name, tflops
    return name, None


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs of one call of ``work`` (forward and any backward it runs)."""
    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return counter.get_total_flops()


def describe_rate(flops: float, seconds: float, peak: float | None) -> str:
    """'12.3 TFLOP/s (4.5 % of dense bf16 peak)' for a measured time."""
    achieved = flops / seconds / 1e12
    share = f" ({achieved / peak:5.1%} of dense bf16 peak)" if peak else ""
    return f"{achieved:8.3f} TFLOP/s{share}"
