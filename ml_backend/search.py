"""CLIP-guided latent search over StyleGAN2: the algorithm, for one job or a batch.

The recipe (:mod:`ml_backend.recipe` holds its constants): keep the best of N random
starts by CLIP score, then optimise the normalised W+ latent
``q = (w - w_avg) / w_std`` with AdamW on a spherical-distance loss over random
cutouts, and render an EMA of ``q`` with constant noise. The user's psi scales ``q``
throughout (``w = w_avg + psi q w_std``), so "creativity" shapes both the starting
point and everything the search finds.

:func:`search` runs one job start to finish, a plain loop in the style of a GAN
projector. :class:`LatentSearchEngine` exposes the same steps for a *list* of jobs,
so :mod:`ml_backend.scheduler` can stack concurrent jobs into one generator + CLIP
pass. Each job owns its optimiser and its random generator (candidates, cutouts),
and nothing in StyleGAN2 or CLIP mixes samples, so a job's result does not depend on
its batch mates beyond floating-point summation order.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ml_backend.guidance import ClipGuide, Targets
from ml_backend.png import encode_png
from ml_backend.precision import Precision
from ml_backend.protocol import (
    MAX_SEED,
    GenerationRequest,
    Progress,
    Result,
    sample_latent,
    seed_to_int,
)
from ml_backend.recipe import DEFAULT_RECIPE, SearchRecipe
from ml_backend.stylegan2 import Generator, to_uint8_images
from ml_backend.upscale import Upscaler

__all__ = ["LatentSearchEngine", "ProgressCallback", "SearchCancelled", "SearchJob",
           "SearchState", "resolve_seed", "search"]

ProgressCallback = Callable[[Progress], None]


class SearchCancelled(Exception):
    """The job was cancelled (by its caller, or because the engine shut down)."""


def resolve_seed(seed: int | str | None) -> int:
    return secrets.randbelow(MAX_SEED) if seed is None else seed_to_int(seed)


@dataclass(frozen=True)
class SearchState:
    """What :meth:`LatentSearchEngine.start` sets up for one job."""

    targets: Targets                     # what the job steers towards and away from
    q: torch.Tensor                      # [num_ws, w_dim], the optimised latent
    q_ema: torch.Tensor                  # [num_ws, w_dim], what gets rendered
    optimizer: torch.optim.Optimizer


@dataclass(eq=False)
class SearchJob:
    """One search between steps."""

    request: GenerationRequest
    seed: int
    psi: float
    rng: torch.Generator                 # the job's own draws: candidates, cutouts
    state: SearchState | None = None     # None until started
    step: int = 0
    score: float = 0.0                   # weighted CLIP similarity at the last step
    loss: float = 0.0                    # what the last step minimised (fp32)
    timings: dict[str, float] = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.step >= self.request.steps

    @property
    def wants_preview(self) -> bool:
        every = self.request.preview_every
        return bool(every) and not self.done and self.step % every == 0

    def progress(self, preview_png: bytes | None = None) -> Progress:
        return Progress(step=self.step, total=self.request.steps, score=self.score,
                        preview_png=preview_png)

    @property
    def started(self) -> SearchState:
        if self.state is None:
            raise RuntimeError("search step on a job that was never started")
        return self.state


class _PhaseClock:
    """Accumulates wall time per phase into ``phases``; does nothing when it is None."""

    def __init__(self, phases: dict[str, float] | None, device: torch.device) -> None:
        self.phases = phases
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.phases is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


class LatentSearchEngine:
    """One generator and the shared CLIP guide: start, step, preview and finish jobs."""

    def __init__(self, *,
                 generator:    Generator,            # the StyleGAN2 to search in
                 guide:        ClipGuide,            # CLIP: prompts, cutouts, loss
                 model_name:   str,                  # recorded in results and PNGs
                 default_psi:  float,                # creativity of requests that give none
                 demo_weights: bool,                 # label results made by demo weights
                 upscaler:     Upscaler | None = None,
                 recipe:       SearchRecipe = DEFAULT_RECIPE,
                 precision:    Precision | None = None,  # search step + scoring; None: fp32
                 ) -> None:
        self.generator = generator
        self.guide = guide
        self.model_name = model_name
        self.default_psi = default_psi
        self.demo_weights = demo_weights
        self.upscaler = upscaler or Upscaler()
        self.recipe = recipe
        self.device = generator.w_avg.device
        self.precision = precision or Precision("fp32", self.device.type)
        self.grad_scaler = self.precision.grad_scaler()              # fp16 only
        self.w_avg = generator.w_avg                                  # [w_dim]
        with torch.no_grad():
            z = torch.randn(recipe.w_std_samples, generator.config.z_dim,
                            generator=torch.Generator().manual_seed(0)).to(self.device)
            w = torch.cat([generator.mapping(c) for c in z.split(2048)])
            self.w_std = w.std(dim=0).clamp_min(1e-6)                 # [w_dim]

    # --- shared helpers ---------------------------------------------------------------

    def _ws(self, q: torch.Tensor, psi: float | torch.Tensor) -> torch.Tensor:
        """normalised latent [..., num_ws, w_dim] -> W+ at creativity psi."""
        return self.w_avg + psi * q * self.w_std

    def _render(self, qs: torch.Tensor, psis: list[float], *, fast: bool = False,
                ) -> torch.Tensor:
        """[N, num_ws, w_dim] -> images [N, 3, H, W] in [-1, 1].

        ``fast``: under the precision policy's autocast (search steps, candidate
        scoring); otherwise the reference path (previews, the final picture). Under
        autocast the checkpoint's own fp16 blocks are switched off: autocast already
        picks the 16-bit type, and mixing both would convert back and forth.
        """
        psi = torch.tensor(psis, device=self.device)[:, None, None]
        ws = self._ws(qs, psi)                                        # fp32
        if not fast:
            return self.generator.synthesize(ws, noise_mode="const", fused_modconv=False)
        with self.precision.autocast():
            return self.generator.synthesize(ws, noise_mode="const", fused_modconv=False,
                                             force_fp32=self.precision.reduced)

    def _png(self, image: torch.Tensor, upscale: int = 1, text: dict[str, Any] | None = None,
             ) -> bytes:
        pixels = to_uint8_images(image[None])[0].numpy()
        return encode_png(self.upscaler(pixels, upscale), text)

    # --- job lifecycle ----------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        """Raise for a prompt CLIP cannot read, before any work is queued."""
        for prompt in request.weighted_prompts():
            self.guide.check_prompt(prompt.text)

    def new_job(self, request: GenerationRequest) -> SearchJob:
        seed = resolve_seed(request.seed)
        return SearchJob(request=request, seed=seed,
                         psi=self.default_psi if request.psi is None else request.psi,
                         rng=torch.Generator().manual_seed(seed))

    def start(self, job: SearchJob) -> None:
        """Encode the prompts and pick the best of N random starts by CLIP score."""
        t0 = time.perf_counter()
        req = job.request
        targets = self.guide.targets(req.weighted_prompts(), req.image_prompt,
                                     req.image_prompt_weight)
        num_ws = self.generator.num_ws
        with torch.no_grad():
            z = torch.randn(req.init_candidates, self.generator.config.z_dim,
                            generator=job.rng).to(self.device)
            q0 = (self.generator.mapping(z) - self.w_avg) / self.w_std    # [N, w_dim]
            losses = []
            for chunk in q0.split(self.recipe.candidate_chunk):
                images = self._render(chunk[:, None].expand(-1, num_ws, -1),
                                      [job.psi] * chunk.shape[0], fast=True)
                embeds = self.guide.embed_images(images, self.precision)  # [n, D]
                losses += [targets.loss(e[None]) for e in embeds]
            best = int(torch.stack(losses).argmin())
        q = q0[best][None].expand(num_ws, -1).clone().requires_grad_(True)
        job.state = SearchState(targets=targets, q=q, q_ema=q.detach().clone(),
                                optimizer=torch.optim.AdamW([q], lr=req.learning_rate,
                                                            betas=self.recipe.adam_betas))
        job.timings["init_s"] = time.perf_counter() - t0

    def step(self, jobs: list[SearchJob], phases: dict[str, float] | None = None) -> None:
        """One optimisation step for every job in one stacked forward/backward pass.

        ``phases``, when given, accumulates seconds per phase (for the benchmark; on
        CUDA it synchronises, which costs a little overlap). Generator and CLIP run
        under the precision policy; the losses, their sum and the optimiser are fp32.
        """
        clock = _PhaseClock(phases, self.device)
        started = [j.started for j in jobs]
        counts = [j.request.cutouts for j in jobs]
        with torch.enable_grad():
            images = self._render(torch.stack([s.q for s in started]), [j.psi for j in jobs],
                                  fast=True)                          # [N, 3, H, W]
            clock.lap("generator_forward")
            with self.precision.autocast():
                cuts = self.guide.cutouts(images, counts, [j.rng for j in jobs],
                                          cut_power=self.recipe.cut_power)  # [sum, 3, R, R]
            embeds = self.guide.encode_pixels(cuts, self.precision)   # [sum, D] fp32
            per_job = embeds.split(counts)
            losses = torch.stack([s.targets.loss(e)
                                  for s, e in zip(started, per_job, strict=True)])  # [N]
            clock.lap("clip_forward")
            total = losses.sum()
            if self.grad_scaler is not None:
                total = self.grad_scaler.scale(total)
            total.backward()
            clock.lap("backward")
        decay = self.recipe.ema_decay
        with torch.no_grad():
            for job, s, e, loss in zip(jobs, started, per_job, losses.detach().tolist(),
                                          strict=True):
                if self.grad_scaler is not None:
                    self.grad_scaler.step(s.optimizer)  # skipped when its grads overflowed
                else:
                    s.optimizer.step()
                s.optimizer.zero_grad(set_to_none=True)
                s.q_ema.mul_(decay).add_(s.q.detach(), alpha=1 - decay)
                job.score = float(s.targets.score(e.detach()))
                job.loss = loss
                job.step += 1
            if self.grad_scaler is not None:
                self.grad_scaler.update()
        clock.lap("optimizer")

    @torch.no_grad()
    def previews(self, jobs: list[SearchJob]) -> list[bytes]:
        images = self._render(torch.stack([j.started.q_ema for j in jobs]),
                              [j.psi for j in jobs])
        return [self._png(img) for img in images]

    @torch.no_grad()
    def finish(self, job: SearchJob) -> Result:
        t0 = time.perf_counter()
        state = job.started
        image = self._render(state.q_ema[None], [job.psi])
        score = float(state.targets.score(self.guide.embed_images(image)))
        t1 = time.perf_counter()
        req = job.request
        png = self._png(image[0], req.upscale, self._png_text(req, job.seed, job.psi))
        t2 = time.perf_counter()
        height, width = image.shape[-2] * req.upscale, image.shape[-1] * req.upscale
        timings = {**job.timings, "render_s": t1 - t0, "encode_s": t2 - t1,
                   "total_s": t2 - job.submitted_at}
        return Result(png=png, width=width, height=height, seed=job.seed, score=score,
                      model=self.model_name, psi=job.psi, steps=req.steps,
                      demo_weights=self.demo_weights, timings=timings)

    @torch.no_grad()
    def sample(self, request: GenerationRequest) -> Result:
        """Random sample mode: one generator pass from the seed, no search."""
        t0 = time.perf_counter()
        seed = resolve_seed(request.seed)
        psi = self.default_psi if request.psi is None else request.psi
        z = torch.tensor([sample_latent(seed, self.generator.config.z_dim)],  # [1, z_dim]
                         device=self.device)
        image = self.generator.synthesize(self.generator.map(z, psi), noise_mode="const")
        t1 = time.perf_counter()
        png = self._png(image[0], request.upscale,
                        self._png_text(request, seed, psi, steps=0))
        t2 = time.perf_counter()
        return Result(png=png, width=image.shape[-1] * request.upscale,
                      height=image.shape[-2] * request.upscale, seed=seed, score=None,
                      model=self.model_name, psi=psi, steps=0,
                      demo_weights=self.demo_weights,
                      timings={"render_s": t1 - t0, "encode_s": t2 - t1, "total_s": t2 - t0})

    def _png_text(self, req: GenerationRequest, seed: int, psi: float,
                  steps: int | None = None) -> dict[str, Any]:
        prompts = " | ".join(f"{p.text}:{p.weight:g}" for p in req.weighted_prompts())
        return {"prompt": prompts or None, "seed": seed, "psi": f"{psi:g}",
                "steps": req.steps if steps is None else steps, "model": self.model_name,
                "image_prompt": "yes" if req.image_prompt else None,
                "demo_weights": "true" if self.demo_weights else None,
                "Software": "clipgan"}


def search(engine: LatentSearchEngine, request: GenerationRequest, *,
           on_progress: ProgressCallback | None = None,
           should_stop: Callable[[], bool] | None = None) -> Result:
    """One job, start to finish, on its own: the algorithm without any scheduling.

    ``should_stop`` is asked between steps; when it says so the search ends with
    :class:`SearchCancelled`. :class:`~ml_backend.scheduler.BatchScheduler` runs
    these same engine steps for many jobs at once.
    """
    engine.check(request)
    job = engine.new_job(request)
    engine.start(job)
    while not job.done:
        if should_stop is not None and should_stop():
            raise SearchCancelled(f"cancelled after {job.step} steps")
        t0 = time.perf_counter()
        engine.step([job])
        job.timings["search_s"] = job.timings.get("search_s", 0.0) + time.perf_counter() - t0
        if on_progress is not None:
            preview = engine.previews([job])[0] if job.wants_preview else None
            on_progress(job.progress(preview))
    return engine.finish(job)
