"""CLIP guidance: prompt limits, caching, cutouts, the loss, loading errors."""

import pytest
import torch

from ml_backend.guidance import GuidanceError, spherical_distance
from ml_backend.pipeline import Pipeline
from ml_backend.protocol import WeightedPrompt
from tests.ml_backend import hostile_images


def test_prompt_longer_than_clip_context_is_an_error(pipeline: Pipeline) -> None:
    guide = pipeline.guide
    guide.check_prompt("word " * 75)  # 75 tokens + 2 markers: exactly fits
    with pytest.raises(GuidanceError, match=r"is 76 tokens long, but CLIP reads at most 75"):
        guide.encode_texts(["word " * 76])


def test_text_embeddings_are_cached(pipeline: Pipeline, monkeypatch) -> None:
    guide = pipeline.guide
    calls = []
    real = guide.model.encode_text
    monkeypatch.setattr(guide.model, "encode_text", lambda t: calls.append(len(t)) or real(t))
    first = guide.encode_texts(["a cached prompt", "another one"])
    again = guide.encode_texts(["another one", "a cached prompt"])
    assert calls == [2]
    assert torch.equal(first[0], again[1])
    assert torch.allclose(first.norm(dim=-1), torch.ones(2))


def test_spherical_distance() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),
                                      dim=-1)
    assert torch.allclose(spherical_distance(a, a), torch.zeros(4), atol=1e-6)
    # arcsin is steep at 1: a float32 norm of 1 - 6e-8 moves the antipodal distance by ~2e-3
    assert torch.allclose(spherical_distance(a, -a), torch.full((4,), 2 * (torch.pi / 2) ** 2),
                          atol=5e-3)


def test_cutouts_follow_the_jobs_own_generator(pipeline: Pipeline) -> None:
    """A job's crops depend on its own seed only, not on which jobs share its batch."""
    guide = pipeline.guide
    images = (torch.rand(3, 3, 64, 64) * 2 - 1).requires_grad_(True)
    seeds = lambda *s: [torch.Generator().manual_seed(i) for i in s]  # noqa: E731
    alone = guide.cutouts(images[:1], [16], seeds(1))
    batched = guide.cutouts(images, [16, 5, 9], seeds(1, 7, 8))
    other_seed = guide.cutouts(images[:1], [16], seeds(2))
    r = guide.input_resolution
    assert alone.shape == (16, 3, r, r) and batched.shape == (30, 3, r, r)
    assert torch.allclose(batched[:16], alone, atol=1e-6)
    assert not torch.allclose(alone, other_seed)
    batched.sum().backward()
    assert images.grad is not None and bool((images.grad.abs().sum(dim=[1, 2, 3]) > 0).all())


def test_targets_weigh_positive_and_negative(pipeline: Pipeline) -> None:
    guide = pipeline.guide
    t = guide.targets([WeightedPrompt(text="smile", weight=1.0),
                       WeightedPrompt(text="hat", weight=-0.5)])
    assert t.embeds.shape[0] == 2 and t.weights.tolist() == [1.0, -0.5]
    hat = guide.encode_texts(["hat"])
    # an embedding equal to the negative prompt scores lower than one equal to the positive
    assert t.score(hat) < t.score(guide.encode_texts(["smile"]))


def test_unreadable_image_prompt(pipeline: Pipeline) -> None:
    with pytest.raises(GuidanceError, match="image prompt is not a readable PNG"):
        pipeline.guide.encode_image_bytes(b"definitely not a picture")


@pytest.mark.parametrize("data", [hostile_images.BOMBS["png-12000"],
                                  hostile_images.REFUSED_FORMATS["EPS"]])
def test_the_ml_side_applies_the_same_image_limits(pipeline: Pipeline, data: bytes) -> None:
    """A request that reaches a replica without the web side (Python, Ray) is bounded too."""
    with pytest.raises(GuidanceError, match=r"megapixels|not a readable PNG"):
        pipeline.guide.encode_image_bytes(data)
