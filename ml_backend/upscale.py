"""x2 / x4 upscaling of finished pictures: Lanczos, or an RRDBNet when one is configured.

The RRDBNet follows the Real-ESRGAN anime 6B layout (``RealESRGAN_x4plus_anime_6B``:
6 RRDB blocks, 64 features, 32 growth channels, x4); its weights are read by
:func:`ml_backend.weights.load_rrdbnet`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

__all__ = ["RRDBNet", "Upscaler"]


class _DenseBlock(nn.Module):
    def __init__(self, feat: int, grow: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling keeps the deep stack stable


class _RRDB(nn.Module):
    def __init__(self, feat: int, grow: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(feat, grow) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """x4 super-resolution network: [N, 3, H, W] in [0, 1] -> [N, 3, 4H, 4W]."""

    def __init__(self, *, num_block: int = 6, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = act(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = act(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(act(self.conv_hr(feat)))


class Upscaler:
    """Lanczos by default; the RRDBNet (x4, then Lanczos down for x2) when given one."""

    def __init__(self, network: RRDBNet | None = None) -> None:
        self.network = network

    @property
    def method(self) -> str:
        return "rrdbnet" if self.network is not None else "lanczos"

    def __call__(self, pixels: np.ndarray, factor: int) -> np.ndarray:
        """pixels: [H, W, 3] uint8 -> [H*factor, W*factor, 3] uint8."""
        if factor == 1:
            return pixels
        h, w, _ = pixels.shape
        if self.network is None:
            return np.asarray(Image.fromarray(pixels).resize(
                (w * factor, h * factor), Image.Resampling.LANCZOS))
        device = next(self.network.parameters()).device
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255).to(device)
        with torch.inference_mode():
            y = self.network(x).clamp(0, 1)
        out = (y[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy()
        if factor == 2:
            out = np.asarray(Image.fromarray(out).resize((w * 2, h * 2), Image.Resampling.LANCZOS))
        return out
