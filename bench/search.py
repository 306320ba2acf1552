"""Latent-search throughput: one job alone vs 8 concurrent jobs through the batch scheduler.

Prints, per precision, search steps/s (job-steps per second) for both, their ratio
(how much batching multiplies throughput), the split of one step into generator
forward, CLIP forward (cutouts + image encoder + loss), backward and optimiser, and
a table of FLOPs per step (counted by torch, see bench/flops.py), achieved TFLOP/s,
% of the GPU's dense bf16 peak and, on CUDA, peak memory and memory per batch slot.
Random weights: speed does not depend on what the weights learned.

  python bench/search.py                                        # CPU: mid-size, fp32
  python bench/search.py --preset tadne-vitb32 --device cuda    # the headline GPU run
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from flops import count_flops, describe_rate, peak_tflops

from ml_backend.guidance import ClipGuide
from ml_backend.precision import Precision
from ml_backend.protocol import GenerationRequest
from ml_backend.scheduler import BatchScheduler, SearchHandle
from ml_backend.search import LatentSearchEngine
from ml_backend.stylegan2 import Generator, GeneratorConfig, tadne_config
from ml_backend.weights import import_clip

PRESETS = {
    "cpu-mid": dict(
        generator=GeneratorConfig(z_dim=256, w_dim=256, img_resolution=128, mapping_layers=4,
                                  channel_base=8192, channel_max=256),
        clip=dict(embed_dim=256, image_resolution=64, vision_layers=4, vision_width=256,
                  vision_patch_size=16, context_length=77, vocab_size=49408,
                  transformer_width=256, transformer_heads=4, transformer_layers=4),
        cutouts=16, steps=6),
    "tadne-vitb32": dict(
        generator=tadne_config(),
        clip=dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                  vision_patch_size=32, context_length=77, vocab_size=49408,
                  transformer_width=512, transformer_heads=8, transformer_layers=12),
        cutouts=32, steps=20),
}


def build_engine(preset: dict, device: str, precision: str) -> LatentSearchEngine:
    clip = import_clip()
    torch.manual_seed(0)
    with torch.device(device):
        generator = Generator(preset["generator"]).eval().requires_grad_(False)
        model = clip.model.CLIP(**preset["clip"]).float().eval().requires_grad_(False)
    resolved = Precision.resolve(precision, device)
    resolved.configure_device()
    return LatentSearchEngine(generator=generator, guide=ClipGuide(model), model_name="bench",
                              default_psi=1.0, demo_weights=True, precision=resolved)


def request(seed: int, preset: dict, steps: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"anime girl number {seed}", steps=steps, seed=seed,
                             cutouts=preset["cutouts"], init_candidates=4, preview_every=0)


def job_steps_per_second(scheduler: BatchScheduler, preset: dict, jobs: int, steps: int,
                         ) -> float:
    """Searching throughput only: time from first to last step, init excluded."""
    stamps: list[float] = []
    handles: list[SearchHandle] = [
        scheduler.submit(request(i, preset, steps), on_progress=lambda p: stamps.append(
            time.perf_counter()))
        for i in range(jobs)]
    for h in handles:
        h.result()
    # the first progress marks the end of the first step; count steps after it
    return (len(stamps) - jobs) / (stamps[-1] - stamps[jobs - 1]) if len(stamps) > jobs else 0.0


@dataclass
class StepFigures:
    """One engine step for a batch of n jobs: time split, FLOPs counted, peak memory."""

    batch: int
    split: dict[str, float]              # seconds per phase (median of 3)
    flops: int                           # matmul + conv FLOPs, forward and backward
    peak_mib: float | None               # CUDA only: most memory allocated during a step

    @property
    def seconds(self) -> float:
        return sum(self.split.values())


def measure_step(engine: LatentSearchEngine, preset: dict, n: int) -> StepFigures:
    jobs = []
    for i in range(n):
        job = engine.new_job(request(i, preset, 500))
        engine.start(job)
        jobs.append(job)
    engine.step(jobs)  # warm-up
    flops = count_flops(lambda: engine.step(jobs))
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(engine.device)
    samples: list[dict[str, float]] = []
    for _ in range(3):
        phases: dict[str, float] = {}
        engine.step(jobs, phases)
        samples.append(phases)
    peak = torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None
    split = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return StepFigures(batch=n, split=split, flops=flops, peak_mib=peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                        default=None, help="default: fp32 and bf16 on CUDA, fp32 on CPU "
                        "(CPUs without bf16 units run it ~10x slower)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    preset_name = args.preset or ("tadne-vitb32" if cuda else "cpu-mid")
    preset = PRESETS[preset_name]
    steps = args.steps or preset["steps"]
    precisions = args.precisions or (["fp32", "bf16"] if cuda else ["fp32"])
    device_name, peak = peak_tflops(args.device)
    print(f"preset={preset_name} device={args.device} ({device_name}) torch={torch.__version__} "
          f"threads={torch.get_num_threads()} dense bf16 peak="
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown'}")

    rows = []
    for precision in precisions:
        engine = build_engine(preset, args.device, precision)
        if precision == precisions[0]:
            gen_params = sum(p.numel() for p in engine.generator.parameters()) / 1e6
            clip_params = sum(p.numel() for p in engine.guide.model.parameters()) / 1e6
            print(f"generator {preset['generator'].img_resolution}px {gen_params:.1f}M params, "
                  f"CLIP {engine.guide.input_resolution}px {clip_params:.1f}M params, "
                  f"{preset['cutouts']} cutouts/job/step, {steps} steps/job")
        print(f"--- precision {precision}")
        scheduler = BatchScheduler(engine, slots=args.jobs)
        job_steps_per_second(scheduler, preset, 1, 2)  # warm-up
        solo = job_steps_per_second(scheduler, preset, 1, steps)
        batched = job_steps_per_second(scheduler, preset, args.jobs, steps)
        scheduler.close()
        print(f"1 job alone:            {solo:7.2f} steps/s")
        print(f"{args.jobs} jobs, batched:        {batched:7.2f} job-steps/s")
        print(f"batching throughput ratio: {batched / solo:5.2f}x")
        for n in (1, args.jobs):
            fig = measure_step(engine, preset, n)
            parts = "  ".join(f"{k} {v * 1000:7.1f} ms ({v / fig.seconds:4.0%})"
                              for k, v in fig.split.items())
            print(f"step split, batch {n}: {fig.seconds * 1000:7.1f} ms | {parts}")
            rows.append((precision, fig))
        del engine
        if cuda:
            torch.cuda.empty_cache()

    print(f"\n{'precision':<10}{'batch':>6}{'ms/step':>10}{'TFLOP/step':>12}"
          f"{'GFLOP/job-step':>16}  achieved")
    for precision, fig in rows:
        memory = f"  peak {fig.peak_mib:,.0f} MiB" if fig.peak_mib is not None else ""
        print(f"{precision:<10}{fig.batch:>6}{fig.seconds * 1000:>10.1f}{fig.flops / 1e12:>12.3f}"
              f"{fig.flops / fig.batch / 1e9:>16.1f}  "
              f"{describe_rate(fig.flops, fig.seconds, peak)}{memory}")
    if cuda:
        for precision in precisions:
            figs = {f.batch: f for p, f in rows if p == precision}
            if len(figs) == 2 and args.jobs > 1:
                small, large = figs[1], figs[args.jobs]
                per_slot = ((large.peak_mib or 0) - (small.peak_mib or 0)) / (args.jobs - 1)
                print(f"{precision}: ~{per_slot:,.0f} MiB of GPU memory per extra batch slot")


if __name__ == "__main__":
    main()
