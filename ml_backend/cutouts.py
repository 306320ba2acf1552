"""Random square cutouts of a batch of images, resampled to CLIP's input in two matmuls.

Why matrices: cutouts have random sizes, so cropping and pooling each one is a
kernel launch per cutout (256 per step for 8 jobs of 32) and each is too small to
fill a GPU. Both resamplings the search uses are linear and separable: area pooling
when the crop is at least CLIP's input size (``adaptive_avg_pool2d``), bilinear
when it is smaller (``interpolate``). A cutout is therefore ``A_y @ image @ A_x^T``
with one [R, H] and one [R, W] matrix that also carry the crop's offset, and every
cutout of every job is two batched matmuls, which tensor cores and autocast handle
as well as any convolution.

Draws come from each job's own generator, the same draws in the same order as a
crop-by-crop loop would make, so a seed still picks the same cutouts whatever the
job's batch mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CutoutPlan", "cut", "cutouts", "draw_cutouts", "plan_cutouts", "resample_matrix"]


@dataclass(frozen=True)
class CutoutPlan:
    """Where the cutouts of N images lie, K per image."""

    rows: torch.Tensor        # [N, K, R, H] vertical resampling, crop offset included
    cols: torch.Tensor        # [N, K, R, W] horizontal resampling


def draw_cutouts(count: int, *, height: int, width: int, min_size: int,
                 rng: torch.Generator, cut_power: float,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` squares in an image: sizes, x0, y0, each [count] int64 on the CPU.

    Sides follow u**cut_power between ``min_size`` and the full image, so most crops
    are small (details) and some cover everything (composition).
    """
    max_size = min(height, width)
    min_size = min(max_size, min_size)
    draws = torch.rand(count, 3, generator=rng)                           # [count, 3]
    sizes = (draws[:, 0] ** cut_power * (max_size - min_size) + min_size).long()
    spread = draws[:, 1:].double()                                        # exact offsets
    x0 = (spread[:, 0] * (width - sizes + 1).double()).long()
    y0 = (spread[:, 1] * (height - sizes + 1).double()).long()
    return sizes, x0, y0


def resample_matrix(starts: torch.Tensor, sizes: torch.Tensor, *, length: int, out: int,
                    ) -> torch.Tensor:
    """One resampling matrix per crop: [C] starts and sizes -> [C, out, length] float32.

    Row i of a crop of size s at start o weighs the pixels ``adaptive_avg_pool2d``
    (s >= out) or bilinear ``interpolate`` with ``align_corners=False`` (s < out)
    would read for output pixel i, at positions o + ...; every row sums to 1.
    """
    device = starts.device
    i = torch.arange(out, device=device)                                  # [out]
    rel = torch.arange(length, device=device)[None] - starts[:, None]     # [C, length]
    rel = rel[:, None, :]                                                 # [C, 1, length]
    s = sizes[:, None]                                                    # [C, 1]
    # area: output i averages crop pixels [floor(i s / out), ceil((i + 1) s / out))
    lo = (i[None] * s).div(out, rounding_mode="floor")                    # [C, out]
    hi = ((i[None] + 1) * s + out - 1).div(out, rounding_mode="floor")    # [C, out]
    inside = (rel >= lo[..., None]) & (rel < hi[..., None])               # [C, out, length]
    matrix = inside.float() / (hi - lo)[..., None].float()
    small = sizes < out
    if bool(small.any()):
        # bilinear, as ATen computes it: src = (i + 0.5) s / out - 0.5, clamped at 0
        scale = sizes[small].float()[:, None] / out                       # [c, 1]
        src = ((i[None].float() + 0.5) * scale - 0.5).clamp_min(0)        # [c, out]
        i0 = src.floor().long()
        i1 = torch.minimum(i0 + 1, sizes[small][:, None] - 1)
        frac = (src - i0.float())[..., None]                              # [c, out, 1]
        rel_small = rel[small]                                            # [c, 1, length]
        matrix[small] = ((rel_small == i0[..., None]) * (1 - frac)
                         + (rel_small == i1[..., None]) * frac)
    return matrix


def plan_cutouts(count: int, rngs: Sequence[torch.Generator], *, height: int, width: int,
                 out: int, cut_power: float, device: torch.device) -> CutoutPlan:
    """Draw ``count`` cutouts per image, each image from its own generator."""
    drawn = [draw_cutouts(count, height=height, width=width, min_size=out, rng=rng,
                          cut_power=cut_power) for rng in rngs]
    size, xs, ys = (torch.cat(t).to(device) for t in zip(*drawn, strict=True))   # [N K]
    n = len(rngs)
    rows = resample_matrix(ys, size, length=height, out=out).reshape(n, count, out, height)
    cols = resample_matrix(xs, size, length=width, out=out).reshape(n, count, out, width)
    return CutoutPlan(rows=rows, cols=cols)


def cut(images: torch.Tensor, plan: CutoutPlan) -> torch.Tensor:
    """images [N, C, H, W] -> cutouts [N K, C, R, R], image by image."""
    n, c, h, w = images.shape
    _, k, r, _ = plan.rows.shape
    cols_t = plan.cols.permute(0, 3, 1, 2).reshape(n, w, k * r)                # [N, W, K R]
    across = images.reshape(n, c * h, w) @ cols_t.to(images.dtype)             # [N, C H, K R]
    across = across.reshape(n, c, h, k, r).permute(0, 3, 2, 1, 4)              # [N, K, H, C, R]
    down = plan.rows.to(across.dtype) @ across.reshape(n, k, h, c * r)         # [N, K, R, C R]
    crops = down.reshape(n, k, r, c, r).permute(0, 1, 3, 2, 4)                 # [N, K, C, R, R]
    return crops.reshape(n * k, c, r, r)


def cutouts(images: torch.Tensor, counts: Sequence[int], rngs: Sequence[torch.Generator], *,
            out: int, cut_power: float) -> torch.Tensor:
    """``counts[n]`` cutouts of image n from ``rngs[n]``: [N, C, H, W] -> [sum, C, R, R].

    Images are grouped by count, one pair of matmuls per distinct count (usually
    one: jobs keep the default). Padding every job to the largest count would cost
    more work and, worse, change the matmul shapes a job sees with its batch mates,
    so its rounding, and the search (Adam with beta1=0) amplifies rounding.
    """
    if len(counts) != images.shape[0] or len(rngs) != len(counts) or min(counts) < 1:
        raise ValueError("one positive cutout count and one generator per image")
    height, width = images.shape[-2:]
    groups: dict[int, list[int]] = {}
    for index, count in enumerate(counts):
        groups.setdefault(count, []).append(index)
    pieces: dict[int, torch.Tensor] = {}
    for count, members in groups.items():
        plan = plan_cutouts(count, [rngs[i] for i in members], height=height, width=width,
                            out=out, cut_power=cut_power, device=images.device)
        group = images if len(groups) == 1 else images[members]
        for i, crops in zip(members, cut(group, plan).split(count), strict=True):
            pieces[i] = crops
    return torch.cat([pieces[i] for i in range(len(counts))])
