"""`clipgan export-onnx`'s graph against the PyTorch generator it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from ml_backend.onnx_export import export_sample_graph
from ml_backend.protocol import MAX_SEED, sample_latent, seed_to_int
from ml_backend.weights import build_generator, read_checkpoint
from tests.ml_backend import builders

pytestmark = pytest.mark.slow  # each export traces the whole generator (~10 s)

SEEDS = [0, 1, seed_to_int("Asuka"), MAX_SEED]
PSIS = [0.0, 0.7, 1.0, 1.5]
TOLERANCE = 1e-3  # max |ONNX - torch| on images in [-1, 1]; measured: ~5e-6


@pytest.fixture(scope="module", params=["demo", "nvidia-conv-clamp"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[torch.nn.Module, Path]:
    """A generator (demo weights; an NVIDIA-style one with conv_clamp and fp16 blocks) and
    its exported sample graph."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "demo":
        from ml_backend.weights.demo import build_demo_generator

        ckpt = build_demo_generator()
    else:
        src = builders.write_nvidia_pkl(folder / "g.pkl", builders.nvidia_generator(
            builders.nvidia_kwargs(conv_clamp=256, num_fp16_res=2)))
        ckpt = read_checkpoint(src)
    generator = build_generator(ckpt)
    path = folder / "sample.onnx"
    export_sample_graph(generator, path, model="anime", default_psi=0.8,
                        demo_weights=ckpt.is_demo)
    return generator, path


def test_onnx_samples_equal_the_pytorch_generator(exported: tuple[torch.nn.Module, Path],
                                                  ) -> None:
    generator, path = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed in SEEDS:
        z = torch.tensor([sample_latent(seed, generator.config.z_dim)])
        for psi in PSIS:
            with torch.no_grad():
                expected = generator.synthesize(generator.map(z, psi), noise_mode="const",
                                                force_fp32=True).numpy()
            (image,) = session.run(["image"], {"z": z.numpy(),
                                               "psi": np.asarray([psi], dtype=np.float32)})
            assert image.shape == expected.shape
            worst = max(worst, float(np.abs(image - expected).max()))
    assert worst <= TOLERANCE, f"ONNX differs from torch by up to {worst:.2e}"


def test_the_graph_says_what_a_server_needs(exported: tuple[torch.nn.Module, Path]) -> None:
    generator, path = exported
    meta = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["clipgan.model"] == "anime" and float(meta["clipgan.default_psi"]) == 0.8
    assert int(meta["clipgan.z_dim"]) == generator.config.z_dim
    assert int(meta["clipgan.resolution"]) == generator.config.img_resolution
