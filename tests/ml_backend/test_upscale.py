"""Upscaling: Lanczos by default, RRDBNet weights in the Real-ESRGAN release layout."""

import numpy as np
import pytest
import torch

from ml_backend.upscale import RRDBNet, Upscaler


def test_anime_6b_layout_size() -> None:
    with torch.device("meta"):
        net = RRDBNet(num_block=6, num_feat=64, num_grow_ch=32)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(4.47e6, rel=0.01)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_lanczos_sizes(factor: int) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    assert Upscaler()(pixels, factor).shape == (16 * factor, 24 * factor, 3)
