"""Instant characters rendered in the web process, on its CPU, with ONNX Runtime.

A sample is one generator pass; with GPU replicas scaled to zero, asking the ML side
for one waits for a GPU node to boot. When ``CLIPGAN_SAMPLE_ONNX`` names a graph
written by ``clipgan export-onnx``, this process renders that model's samples itself
(about what the ONNX-on-CPU bots of the seed systems did) and falls back to the ML
side for other models. No torch here: the latent comes from the contract's
:func:`~ml_backend.protocol.sample_latent`, the same values the ML side uses.
"""

from __future__ import annotations

import asyncio
import io
import weakref
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from ml_backend.protocol import sample_latent

__all__ = ["OnnxSampler", "SampleImage", "SamplerBusy"]

_PREFIX = "clipgan."


class SamplerBusy(Exception):
    """Too many samples are already waiting for this process's CPU."""


@dataclass(frozen=True)
class SampleImage:
    png: bytes
    seed: int
    psi: float


class OnnxSampler:
    """One ONNX sample graph, loaded once per process; renders one sample at a time
    (each may use ``threads`` cores: a crowd of samples must not starve the API).

    Samples wait for their turn on the event loop, not in the shared thread pool, and
    at most ``max_waiting`` of them: beyond that :class:`SamplerBusy`.
    """

    def __init__(self, path: Path, *, threads: int = 1, max_waiting: int = 16) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types, not exported
            raise ValueError(f"CLIPGAN_SAMPLE_ONNX: {path} cannot be loaded as an ONNX model "
                             f"({str(exc).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ("model", "default_psi", "z_dim", "resolution")
                   if _PREFIX + key not in meta]
        if missing:
            raise ValueError(f"CLIPGAN_SAMPLE_ONNX: {path} is not a clipgan sample graph (no "
                             f"{', '.join(missing)} in its metadata); write one with "
                             f"`clipgan export-onnx`")
        self.model = meta[_PREFIX + "model"]
        self.default_psi = float(meta[_PREFIX + "default_psi"])
        self.z_dim = int(meta[_PREFIX + "z_dim"])
        self.resolution = int(meta[_PREFIX + "resolution"])
        self.demo_weights = meta.get(_PREFIX + "demo_weights") == "true"
        self.max_waiting = max_waiting
        self._in_line = 0  # samples drawing or waiting (touched only on the event loop)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                               anyio.CapacityLimiter] = weakref.WeakKeyDictionary()

    def serves(self, model: str) -> bool:
        return model in ("default", self.model)

    async def render(self, seed: int, psi: float | None) -> SampleImage:
        """The sample, rendered in a worker thread once it is this one's turn."""
        if self._in_line > self.max_waiting:  # one drawing and max_waiting waiting
            raise SamplerBusy(f"{self.max_waiting} samples are already waiting")
        turn = self._turns.setdefault(asyncio.get_running_loop(), anyio.CapacityLimiter(1))
        self._in_line += 1
        try:
            return await anyio.to_thread.run_sync(self._render, seed, psi, limiter=turn)
        finally:
            self._in_line -= 1

    def _render(self, seed: int, psi: float | None) -> SampleImage:
        psi = self.default_psi if psi is None else psi
        z = np.asarray([sample_latent(seed, self.z_dim)], dtype=np.float32)  # [1, z_dim]
        (image,) = self.session.run(["image"], {"z": z, "psi": np.asarray(
            [psi], dtype=np.float32)})                                        # [1, 3, R, R]
        pixels = np.clip(image[0] * 127.5 + 128, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return SampleImage(_png(pixels, seed=seed, psi=psi, model=self.model,
                                demo=self.demo_weights), seed, psi)


def _png(pixels: np.ndarray, *, seed: int, psi: float, model: str, demo: bool) -> bytes:
    """[H, W, 3] uint8 -> PNG with the same text chunks the ML side writes for a sample."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (("seed", str(seed)), ("psi", f"{psi:g}"), ("steps", "0"),
                       ("model", model), ("demo_weights", "true" if demo else None),
                       ("Software", "clipgan")):
        if value is not None:
            info.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()
