"""In-process API: everything the ML side does, with no Ray and no web server.

    pipeline = Pipeline.from_settings(MLSettings())
    result = pipeline.generate(GenerationRequest(prompt="blue hair, smile"),
                               on_progress=lambda p: print(p.step, p.score))
    Path("out.png").write_bytes(result.png)

The Ray Serve deployment wraps exactly this object.
"""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from ml_backend.guidance import ClipGuide
from ml_backend.precision import Precision
from ml_backend.protocol import GenerationRequest, Result
from ml_backend.scheduler import BatchScheduler, SearchHandle
from ml_backend.search import LatentSearchEngine, ProgressCallback
from ml_backend.settings import MLSettings
from ml_backend.upscale import Upscaler
from ml_backend.weights import (
    demo_clip_path,
    demo_generator_path,
    describe,
    load_clip,
    load_generator,
    load_rrdbnet,
)

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


class Pipeline:
    """Named generators sharing one CLIP, each with its own batch scheduler."""

    def __init__(self, *, settings: MLSettings, guide: ClipGuide,
                 engines: dict[str, LatentSearchEngine], info: dict[str, Any]) -> None:
        self.settings = settings
        self.guide = guide
        self.engines = engines
        self._info = info
        self.schedulers = {name: BatchScheduler(engine, slots=settings.batch_slots)
                           for name, engine in engines.items()}

    @classmethod
    def from_settings(cls, settings: MLSettings | None = None) -> Pipeline:
        """Load every configured model (demo weights where none is configured)."""
        settings = settings or MLSettings()
        device = settings.resolved_device()
        precision = Precision.resolve(settings.precision, device)
        precision.configure_device()
        clip_path = settings.clip_checkpoint or demo_clip_path(settings.data_dir)
        guide = ClipGuide(load_clip(clip_path, device=device))
        upscaler = Upscaler(load_rrdbnet(settings.upscaler_checkpoint, device=device)
                            if settings.upscaler_checkpoint else None)
        engines: dict[str, LatentSearchEngine] = {}
        models_info: dict[str, Any] = {}
        for name, spec in settings.model_registry().items():
            path = spec.checkpoint or demo_generator_path(settings.data_dir)
            generator, ckpt = load_generator(path, device=device)
            engines[name] = LatentSearchEngine(
                generator=generator, guide=guide, model_name=name, default_psi=spec.psi,
                demo_weights=ckpt.is_demo, upscaler=upscaler, precision=precision)
            summary = describe(ckpt)
            models_info[name] = {
                "description": spec.description or ("untrained demo weights" if ckpt.is_demo
                                                    else path.name),
                "default_psi": spec.psi, "resolution": summary["resolution"],
                "parameters": summary["parameters"], "demo_weights": ckpt.is_demo,
                "format": summary["format"],
            }
            log.info("model %r ready: %s, %d px, %.1f M parameters%s", name, path,
                     summary["resolution"], summary["parameters"] / 1e6,
                     " (UNTRAINED DEMO WEIGHTS)" if ckpt.is_demo else "")
        info = {
            "device": device,
            "precision": precision.name,
            "models": models_info,
            "clip": {"input_resolution": guide.input_resolution, "embed_dim": guide.embed_dim,
                     "demo_weights": settings.clip_checkpoint is None},
            "upscaler": upscaler.method,
            "batch_slots": settings.batch_slots,
            "versions": {"clipgan": _version("clipgan"), "torch": torch.__version__,
                         "ray": _version("ray"), "python": platform.python_version()},
        }
        return cls(settings=settings, guide=guide, engines=engines, info=info)

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def engine_for(self, request: GenerationRequest) -> LatentSearchEngine:
        name, _ = self.settings.resolve_model(request.model)
        return self.engines[name]

    def submit(self, request: GenerationRequest,
               on_progress: ProgressCallback | None = None) -> SearchHandle:
        """Start a search; returns at once. Raises on an unknown model or a bad prompt."""
        name, _ = self.settings.resolve_model(request.model)
        return self.schedulers[name].submit(request, on_progress)

    def sample(self, request: GenerationRequest) -> Result:
        return self.engine_for(request).sample(request)

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None,
                 timeout: float | None = None) -> Result:
        """Blocking: a sample when there is nothing to guide towards, else a search."""
        if request.is_sample:
            return self.sample(request)
        return self.submit(request, on_progress).result(timeout)

    def load(self) -> dict[str, dict[str, int]]:
        """Per model: searches running in the batch and waiting for a slot."""
        out = {}
        for name, scheduler in self.schedulers.items():
            active, pending = scheduler.load
            out[name] = {"active": active, "pending": pending, "slots": scheduler.slots,
                         "steps_done": scheduler.steps_done}
        return out

    def check_alive(self) -> None:
        for name, scheduler in self.schedulers.items():
            if not scheduler.alive:
                raise RuntimeError(f"search worker of model {name!r} has stopped")

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()
