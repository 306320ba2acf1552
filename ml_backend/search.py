"""CLIP-guided latent search over StyleGAN2, batched across concurrent jobs.

The recipe (see DESIGN.md): keep the best of N random starts by CLIP score, then
optimise the normalised W+ latent ``q = (w - w_avg) / w_std`` with AdamW on a
spherical-distance loss over random cutouts, and render an EMA of ``q`` with
constant noise. The user's psi scales ``q`` throughout (``w = w_avg + psi q w_std``),
so "creativity" shapes both the starting point and everything the search finds.

Batching: :class:`BatchScheduler` stacks the latents of every active job into one
generator + CLIP forward/backward per step. Jobs join and leave at step
boundaries. Each job owns its optimiser and its random generator (candidates,
cutouts), and nothing in StyleGAN2 or CLIP mixes samples, so a job's result does
not depend on its batch mates beyond floating-point summation order.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from ml_backend.guidance import ClipGuide, Targets
from ml_backend.png import encode_png
from ml_backend.protocol import MAX_SEED, GenerationRequest, Progress, Result, seed_to_int
from ml_backend.stylegan2 import Generator, to_uint8_images
from ml_backend.upscale import Upscaler

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
EMA_DECAY = 0.9
ADAM_BETAS = (0.0, 0.999)
W_STD_SAMPLES = 10_000


class SearchCancelled(Exception):
    """The job was cancelled (by its caller, or because the engine shut down)."""


def resolve_seed(seed: int | str | None) -> int:
    return secrets.randbelow(MAX_SEED) if seed is None else seed_to_int(seed)


@dataclass(eq=False)
class SearchJob:
    """One search's state between steps."""

    handle: SearchHandle
    request: GenerationRequest
    seed: int
    psi: float
    on_progress: ProgressCallback | None
    rng: torch.Generator                 # the job's own draws: candidates, cutouts
    targets: Targets | None = None
    q: torch.Tensor | None = None        # [num_ws, w_dim], the optimised latent
    q_ema: torch.Tensor | None = None    # [num_ws, w_dim], what gets rendered
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    score: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class SearchHandle:
    """The caller's side of a submitted search: cancel it, wait for its Result."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.future: Future[Result] = Future()
        self._cancel = threading.Event()
        self._wake: Callable[[], None] = lambda: None

    def cancel(self) -> None:
        """Stop the search at the next step boundary (at most one step later)."""
        self._cancel.set()
        self._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> Result:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()


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

    def __init__(self, *, generator: Generator, guide: ClipGuide, model_name: str,
                 default_psi: float, demo_weights: bool, upscaler: Upscaler | None = None,
                 ) -> None:
        self.generator = generator
        self.guide = guide
        self.model_name = model_name
        self.default_psi = default_psi
        self.demo_weights = demo_weights
        self.upscaler = upscaler or Upscaler()
        self.device = generator.w_avg.device
        self.w_avg = generator.w_avg                                  # [w_dim]
        with torch.no_grad():
            z = torch.randn(W_STD_SAMPLES, generator.config.z_dim,
                            generator=torch.Generator().manual_seed(0)).to(self.device)
            w = torch.cat([generator.mapping(c) for c in z.split(2048)])
            self.w_std = w.std(dim=0).clamp_min(1e-6)                 # [w_dim]

    # --- shared helpers ---------------------------------------------------------------

    def _ws(self, q: torch.Tensor, psi: float) -> torch.Tensor:
        """normalised latent [..., num_ws, w_dim] -> W+ at creativity psi."""
        return self.w_avg + psi * q * self.w_std

    def _render(self, qs: torch.Tensor, psis: list[float]) -> torch.Tensor:
        """[N, num_ws, w_dim] -> images [N, 3, H, W] in [-1, 1]."""
        psi = torch.tensor(psis, device=self.device)[:, None, None]
        return self.generator.synthesize(self._ws(qs, psi), noise_mode="const",
                                         fused_modconv=False)

    def _png(self, image: torch.Tensor, upscale: int = 1, text: dict[str, Any] | None = None,
             ) -> bytes:
        pixels = to_uint8_images(image[None])[0].numpy()
        return encode_png(self.upscaler(pixels, upscale), text)

    # --- job lifecycle ----------------------------------------------------------------

    def new_job(self, request: GenerationRequest, handle: SearchHandle,
                on_progress: ProgressCallback | None) -> SearchJob:
        seed = resolve_seed(request.seed)
        return SearchJob(handle=handle, request=request, seed=seed,
                         psi=self.default_psi if request.psi is None else request.psi,
                         on_progress=on_progress, rng=torch.Generator().manual_seed(seed))

    def start(self, job: SearchJob) -> None:
        """Encode the prompts and pick the best of N random starts by CLIP score."""
        t0 = time.perf_counter()
        req = job.request
        job.targets = self.guide.targets(req.weighted_prompts(), req.image_prompt,
                                         req.image_prompt_weight)
        num_ws = self.generator.num_ws
        with torch.no_grad():
            z = torch.randn(req.init_candidates, self.generator.config.z_dim,
                            generator=job.rng).to(self.device)
            q0 = (self.generator.mapping(z) - self.w_avg) / self.w_std    # [N, w_dim]
            losses = []
            for chunk in q0.split(8):
                images = self._render(chunk[:, None].expand(-1, num_ws, -1),
                                      [job.psi] * chunk.shape[0])
                embeds = self.guide.embed_images(images)                  # [n, D]
                losses += [job.targets.loss(e[None]) for e in embeds]
            best = int(torch.stack(losses).argmin())
        job.q = q0[best][None].expand(num_ws, -1).clone().requires_grad_(True)
        job.q_ema = job.q.detach().clone()
        job.optimizer = torch.optim.AdamW([job.q], lr=req.learning_rate, betas=ADAM_BETAS)
        job.timings["init_s"] = time.perf_counter() - t0

    def step(self, jobs: list[SearchJob], phases: dict[str, float] | None = None) -> None:
        """One optimisation step for every job in one stacked forward/backward pass.

        ``phases``, when given, accumulates seconds per phase (for the benchmark; on
        CUDA it synchronises, which costs a little overlap).
        """
        clock = _PhaseClock(phases, self.device)
        with torch.enable_grad():
            images = self._render(torch.stack([j.q for j in jobs]), [j.psi for j in jobs])
            clock.lap("generator_forward")
            cuts = [self.guide.cutouts(images[i], j.request.cutouts, j.rng)
                    for i, j in enumerate(jobs)]
            embeds = self.guide.encode_pixels(torch.cat(cuts))
            per_job = embeds.split([c.shape[0] for c in cuts])
            losses = [j.targets.loss(e) for j, e in zip(jobs, per_job, strict=True)]
            clock.lap("clip_forward")
            torch.stack(losses).sum().backward()
            clock.lap("backward")
        with torch.no_grad():
            for job, e in zip(jobs, per_job, strict=True):
                job.optimizer.step()
                job.optimizer.zero_grad(set_to_none=True)
                job.q_ema.mul_(EMA_DECAY).add_(job.q.detach(), alpha=1 - EMA_DECAY)
                job.score = float(job.targets.score(e.detach()))
                job.step += 1
        clock.lap("optimizer")

    @torch.no_grad()
    def previews(self, jobs: list[SearchJob]) -> list[bytes]:
        images = self._render(torch.stack([j.q_ema for j in jobs]), [j.psi for j in jobs])
        return [self._png(img) for img in images]

    @torch.no_grad()
    def finish(self, job: SearchJob) -> Result:
        t0 = time.perf_counter()
        image = self._render(job.q_ema[None], [job.psi])
        score = float(job.targets.score(self.guide.embed_images(image)))
        t1 = time.perf_counter()
        req = job.request
        png = self._png(image[0], req.upscale, self._png_text(req, job.seed, job.psi))
        t2 = time.perf_counter()
        height, width = image.shape[-2] * req.upscale, image.shape[-1] * req.upscale
        timings = {**job.timings, "render_s": t1 - t0, "encode_s": t2 - t1,
                   "total_s": t2 - job.started}
        return Result(png=png, width=width, height=height, seed=job.seed, score=score,
                      model=self.model_name, psi=job.psi, steps=req.steps,
                      demo_weights=self.demo_weights, timings=timings)

    @torch.no_grad()
    def sample(self, request: GenerationRequest) -> Result:
        """Random sample mode: one generator pass from the seed, no search."""
        t0 = time.perf_counter()
        seed = resolve_seed(request.seed)
        psi = self.default_psi if request.psi is None else request.psi
        z = torch.randn(1, self.generator.config.z_dim,
                        generator=torch.Generator().manual_seed(seed)).to(self.device)
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


def _close_at_exit(scheduler: weakref.ref[BatchScheduler]) -> None:
    live = scheduler()
    if live is not None:
        live.close()


class BatchScheduler:
    """Runs searches on one engine in a worker thread, ``slots`` of them per pass.

    Callers submit from any thread and get a :class:`SearchHandle`. Progress
    callbacks run on the worker thread between steps, so they must be quick
    (hand off to a queue); one that raises cancels its job.
    """

    def __init__(self, engine: LatentSearchEngine, *, slots: int = 8) -> None:
        self.engine = engine
        self.slots = slots
        self._pending: deque[SearchJob] = deque()
        self._active: list[SearchJob] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps_done = 0
        self._thread = threading.Thread(target=self._run, name=f"search-{engine.model_name}",
                                        daemon=True)
        self._thread.start()
        # A daemon thread frozen mid-step while the interpreter finalises makes torch
        # abort the process ("terminate called without an active exception"), so a
        # server stopped during a search would exit with SIGABRT. Stop it first; the
        # weak reference keeps this hook from holding the models alive.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def load(self) -> tuple[int, int]:
        """(active, pending) job counts."""
        with self._cond:
            return len(self._active), len(self._pending)

    def submit(self, request: GenerationRequest,
               on_progress: ProgressCallback | None = None) -> SearchHandle:
        """Queue a search. Prompt problems raise here, before anything is queued."""
        for prompt in request.weighted_prompts():
            self.engine.guide.check_prompt(prompt.text)
        handle = SearchHandle()
        job = self.engine.new_job(request, handle, on_progress)
        handle._wake = self._wake
        with self._cond:
            if self._closed:
                raise RuntimeError("the search engine is shut down")
            self._pending.append(job)
            self._cond.notify_all()
        return handle

    def close(self, timeout: float | None = 10.0) -> None:
        atexit.unregister(self._exit_hook)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._active or self._pending):
                    self._cond.wait()
                if self._closed:
                    for job in [*self._active, *self._pending]:
                        job.handle.future.set_exception(SearchCancelled("engine shut down"))
                    self._active.clear()
                    self._pending.clear()
                    return
                admitted = []
                while self._pending and len(self._active) + len(admitted) < self.slots:
                    admitted.append(self._pending.popleft())
            for job in admitted:
                if job.handle.cancel_requested:
                    job.handle.future.set_exception(SearchCancelled("cancelled before start"))
                    continue
                try:
                    self.engine.start(job)
                except Exception as exc:  # bad image prompt, CLIP error: this job only
                    job.handle.future.set_exception(exc)
                    continue
                with self._cond:
                    self._active.append(job)
            self._step_active()

    def _drop(self, job: SearchJob, exc: BaseException | None = None,
              result: Result | None = None) -> None:
        with self._cond:
            self._active.remove(job)
        if exc is not None:
            job.handle.future.set_exception(exc)
        else:
            job.handle.future.set_result(result)

    def _step_active(self) -> None:
        for job in [j for j in self._active if j.handle.cancel_requested]:
            self._drop(job, SearchCancelled(f"cancelled after {job.step} steps"))
        jobs = list(self._active)
        if not jobs:
            return
        t0 = time.perf_counter()
        try:
            self.engine.step(jobs)
        except Exception as exc:  # e.g. CUDA OOM: fail this batch, keep serving
            log.exception("search step failed for %d job(s)", len(jobs))
            for job in jobs:
                self._drop(job, exc)
            return
        elapsed = time.perf_counter() - t0
        self.steps_done += len(jobs)
        preview_jobs = [j for j in jobs if j.request.preview_every and j.step < j.request.steps
                        and j.step % j.request.preview_every == 0]
        previews = dict(zip(preview_jobs, self.engine.previews(preview_jobs), strict=True)
                        ) if preview_jobs else {}
        for job in jobs:
            job.timings["search_s"] = job.timings.get("search_s", 0.0) + elapsed
            if job.on_progress is not None:
                try:
                    job.on_progress(Progress(step=job.step, total=job.request.steps,
                                             score=job.score, preview_png=previews.get(job)))
                except Exception as exc:
                    log.warning("progress consumer of job %d failed (%s); cancelling it",
                                job.handle.id, exc)
                    job.handle.cancel()
            if job.step >= job.request.steps and not job.handle.cancel_requested:
                try:
                    self._drop(job, result=self.engine.finish(job))
                except Exception as exc:
                    log.exception("finishing job %d failed", job.handle.id)
                    self._drop(job, exc)
