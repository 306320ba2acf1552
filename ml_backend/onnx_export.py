"""A generator's sample path as one ONNX graph, so samples can be served from any CPU.

An instant character is one generator pass: mapping, truncation, synthesis with
constant noise. With GPU replicas scaled to zero it should not wait for a GPU node
to boot, so a web process can run this graph in ONNX Runtime on its own CPU
(``CLIPGAN_SAMPLE_ONNX``; see ``web_backend/samples/onnx.py``, which never imports
torch). The latent comes from :func:`ml_backend.protocol.sample_latent` on both
sides, so a name gives the same face wherever it is rendered.

The graph is ``(z: float32[1, z_dim], psi: float32[1]) -> image: float32[1, 3, R, R]``
in roughly [-1, 1], fp32 throughout, and the file carries what a server needs in
its metadata (``clipgan.*``: model name, default psi, z_dim, resolution, whether the
weights are the demo's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml_backend.stylegan2 import Generator

__all__ = ["METADATA_PREFIX", "SampleGraph", "SampleGraphInfo", "export_sample_graph"]

log = logging.getLogger(__name__)

METADATA_PREFIX = "clipgan."


class SampleGraph(nn.Module):
    """What a sample computes, with psi as an input (truncation inside the graph)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """z: [N, z_dim], psi: [N] -> image: [N, C, R, R]"""
        g = self.generator
        w = g.mapping(z)                                        # [N, w_dim]
        w = g.w_avg + psi[:, None] * (w - g.w_avg)              # truncation, any psi
        ws = w.unsqueeze(1).expand(-1, g.num_ws, -1)            # [N, num_ws, w_dim]
        return g.synthesis(ws, noise_mode="const", force_fp32=True, fused_modconv=False)


@dataclass(frozen=True)
class SampleGraphInfo:
    model: str             # the name requests use for it ("default" unless told)
    default_psi: float     # when a request gives none
    z_dim: int
    resolution: int
    demo_weights: bool

    def metadata(self) -> dict[str, str]:
        return {f"{METADATA_PREFIX}{key}": str(value).lower() if isinstance(value, bool)
                else str(value) for key, value in vars(self).items()}


def export_sample_graph(generator: Generator, dst: Path, *, model: str, default_psi: float,
                        demo_weights: bool) -> SampleGraphInfo:
    """Write ``generator``'s sample graph to ``dst`` (one file, weights inside)."""
    import onnx

    config = generator.config
    info = SampleGraphInfo(model=model, default_psi=default_psi, z_dim=config.z_dim,
                           resolution=config.img_resolution, demo_weights=demo_weights)
    graph = SampleGraph(generator.float().eval()).eval()
    example = (torch.zeros(1, config.z_dim), torch.tensor([default_psi]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with torch.no_grad():
        program = torch.onnx.export(graph, example, dynamo=True, input_names=["z", "psi"],
                                    output_names=["image"], verbose=False)
    if program is None:
        raise RuntimeError("the ONNX exporter returned no program")
    model_proto = program.model_proto
    for key, value in info.metadata().items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model_proto, tmp)
    onnx.checker.check_model(str(tmp))
    tmp.replace(dst)
    log.info("wrote %s: %s, %d px, z_dim %d", dst, model, info.resolution, info.z_dim)
    return info
