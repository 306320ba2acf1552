"""The Real-ESRGAN RRDBNet reader: the release layout, and clear refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_backend.upscale import RRDBNet, Upscaler
from ml_backend.weights import CheckpointError, load_rrdbnet


def test_rrdbnet_from_params_ema(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RRDBNet(num_block=2, num_feat=8, num_grow_ch=4)
    path = tmp_path / "RealESRGAN_x4plus_anime_6B.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    up = Upscaler(load_rrdbnet(path))
    assert up.method == "rrdbnet"
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    x4 = up(pixels, 4)
    expected = net(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255).clamp(0, 1)
    expected = (expected[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(x4, expected)
    assert up(pixels, 2).shape == (16, 16, 3)


def test_rrdbnet_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_rrdbnet(tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"params_ema": {"foo": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="no RRDBNet weights"):
        load_rrdbnet(other)
    cut = tmp_path / "cut.pth"
    torch.save({"params_ema": RRDBNet(num_block=1, num_feat=4, num_grow_ch=2).state_dict()}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        load_rrdbnet(cut)
