"""Batched cutouts: the same crops, pooled the same way, as cropping one by one."""

import pytest
import torch
import torch.nn.functional as F

from ml_backend.cutouts import cutouts, draw_cutouts, resample_matrix


def crop_by_crop(image: torch.Tensor, count: int, rng: torch.Generator, out: int,
                 cut_power: float) -> torch.Tensor:
    """The reference: slice each crop and pool it (area) or stretch it (bilinear)."""
    _, h, w = image.shape
    sizes, xs, ys = draw_cutouts(count, height=h, width=w, min_size=out, rng=rng,
                                 cut_power=cut_power)
    crops = []
    for s, x, y in zip(sizes.tolist(), xs.tolist(), ys.tolist(), strict=True):
        crop = image[None, :, y:y + s, x:x + s]
        if s >= out:
            crops.append(F.adaptive_avg_pool2d(crop, out))
        else:
            crops.append(F.interpolate(crop, size=(out, out), mode="bilinear",
                                       align_corners=False))
    return torch.cat(crops)


@pytest.mark.parametrize(("side", "out", "cut_power"), [
    (64, 24, 1.0),     # crops larger than CLIP's input: area pooling
    (32, 48, 1.0),     # an image smaller than CLIP's input: bilinear stretching
    (40, 40, 2.0),     # crops exactly CLIP-sized: a copy
    (96, 37, 0.5),     # pooling windows of uneven width
])
def test_batched_cutouts_equal_crop_by_crop(side: int, out: int, cut_power: float) -> None:
    images = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(side))
    counts = [5, 9, 5]   # two jobs share a count, one does not
    rngs = [torch.Generator().manual_seed(i) for i in range(3)]
    got = cutouts(images, counts, rngs, out=out, cut_power=cut_power)
    want = torch.cat([crop_by_crop(images[i], c, torch.Generator().manual_seed(i), out,
                                   cut_power) for i, c in enumerate(counts)])
    assert got.shape == (sum(counts), 3, out, out)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_crops_follow_each_jobs_own_draws() -> None:
    """The same seed gives the same crops whatever the batch mates and their counts."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    alone = cutouts(images[2:3], [16], [torch.Generator().manual_seed(7)], out=32,
                    cut_power=1.0)
    mates = cutouts(images, [16, 3, 16, 8],
                    [torch.Generator().manual_seed(s) for s in (1, 2, 7, 4)],
                    out=32, cut_power=1.0)
    torch.testing.assert_close(mates[19:35], alone, atol=1e-6, rtol=0)


def test_every_output_pixel_is_a_weighted_mean_inside_its_crop() -> None:
    starts, sizes = torch.tensor([0, 5, 30, 2]), torch.tensor([64, 20, 34, 7])
    matrix = resample_matrix(starts, sizes, length=64, out=16)                 # [4, 16, 64]
    torch.testing.assert_close(matrix.sum(-1), torch.ones(4, 16))
    for m, start, size in zip(matrix, starts.tolist(), sizes.tolist(), strict=True):
        assert bool((m[:, :start] == 0).all()) and bool((m[:, start + size:] == 0).all())
        assert bool((m >= 0).all())


def test_gradients_reach_every_image() -> None:
    images = torch.randn(3, 3, 48, 48).requires_grad_(True)
    crops = cutouts(images, [4, 4, 2], [torch.Generator().manual_seed(i) for i in range(3)],
                    out=16, cut_power=1.0)
    crops.square().sum().backward()
    assert images.grad is not None
    assert bool((images.grad.abs().sum(dim=[1, 2, 3]) > 0).all())


def test_a_count_per_image_is_required() -> None:
    with pytest.raises(ValueError, match="one positive cutout count"):
        cutouts(torch.zeros(2, 3, 8, 8), [4], [torch.Generator()], out=4, cut_power=1.0)
