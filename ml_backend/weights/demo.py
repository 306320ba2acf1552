"""Small, deterministic, UNTRAINED demo weights, so the service runs with no download.

Weights cannot be fetched at run time, so a fresh checkout builds a tiny random
generator on first use and caches it under the data directory. Its pictures are
colourful noise, not anime: everything built on it says so (log line, metadata,
model info), and real checkpoints are configured by path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ml_backend.files import atomic_write
from ml_backend.stylegan2 import Generator, GeneratorConfig, SynthesisLayer
from ml_backend.weights.clip import import_clip
from ml_backend.weights.generator import GeneratorCheckpoint, save_checkpoint

__all__ = ["build_demo_clip_state_dict", "build_demo_generator", "demo_clip_path",
           "demo_generator_path"]

log = logging.getLogger(__name__)

DEMO_VERSION = "1"
DEMO_SEED = 20261122
DEMO_GENERATOR_CONFIG = GeneratorConfig(
    z_dim=64, w_dim=64, img_resolution=64, mapping_layers=2,
    channels=(128, 128, 64, 64, 32),
)


def build_demo_generator() -> GeneratorCheckpoint:
    """Same bytes on every machine with the same torch: the seed fixes every tensor."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        generator = Generator(DEMO_GENERATOR_CONFIG)
        with torch.no_grad():
            for layer in generator.modules():
                if isinstance(layer, SynthesisLayer):
                    layer.noise_strength.fill_(0.05)  # visible but not dominant texture
            z = torch.randn(4096, DEMO_GENERATOR_CONFIG.z_dim)
            generator.mapping.w_avg.copy_(generator.mapping(z).mean(dim=0))
    return GeneratorCheckpoint(
        config=DEMO_GENERATOR_CONFIG,
        state_dict={k: v.detach().clone() for k, v in generator.state_dict().items()},
        source_format="clipgan-safetensors",
        metadata={"demo": "true", "name": f"demo-stylegan2-64px-v{DEMO_VERSION}",
                  "note": "untrained random weights built by clipgan for demos and tests"},
    )


def demo_generator_path(data_dir: Path) -> Path:
    """Path of the cached demo generator, building it the first time."""
    path = Path(data_dir) / "demo" / f"stylegan2-demo-v{DEMO_VERSION}.safetensors"
    if not path.exists():
        log.warning("building untrained demo generator at %s (no checkpoint configured)", path)
        save_checkpoint(build_demo_generator(), path)
    return path


DEMO_CLIP_ARGS = dict(  # clip.model.CLIP(...) keyword arguments; 3.3 M parameters
    embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
    transformer_layers=1,
)


def build_demo_clip_state_dict() -> dict[str, torch.Tensor]:
    """A tiny random CLIP with the real tokenizer and layout, built from a fixed seed."""
    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED + 1)
        model = clip.model.CLIP(**DEMO_CLIP_ARGS)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def demo_clip_path(data_dir: Path) -> Path:
    """Path of the cached demo CLIP (safetensors), building it the first time."""
    from safetensors.torch import save

    path = Path(data_dir) / "demo" / f"clip-demo-v{DEMO_VERSION}.safetensors"
    if not path.exists():
        log.warning("building untrained demo CLIP at %s (no CLIP checkpoint configured)", path)
        atomic_write(path, save(build_demo_clip_state_dict(), metadata={
            "clipgan.demo": "true", "clipgan.note": "untrained random CLIP"}))
    return path
