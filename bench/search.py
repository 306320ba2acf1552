"""Latent-search throughput: one job alone vs 8 concurrent jobs through the batch scheduler.

Prints search steps/s (job-steps per second) for both, their ratio (the headline:
how much batching multiplies throughput), and the split of one step into generator
forward, CLIP forward (cutouts + image encoder + loss), backward and optimiser.
Random weights: speed does not depend on what the weights learned.

  python bench/search.py                          # CPU: mid-size generator + small CLIP
  python bench/search.py --preset tadne-vitb32    # GPU: TADNE-size generator, ViT-B/32 dims
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ml_backend.guidance import ClipGuide
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


def build_engine(preset: dict, device: str) -> LatentSearchEngine:
    clip = import_clip()
    torch.manual_seed(0)
    with torch.device(device):
        generator = Generator(preset["generator"]).eval().requires_grad_(False)
        model = clip.model.CLIP(**preset["clip"]).float().eval().requires_grad_(False)
    return LatentSearchEngine(generator=generator, guide=ClipGuide(model), model_name="bench",
                              default_psi=1.0, demo_weights=True)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    preset_name = args.preset or ("tadne-vitb32" if args.device.startswith("cuda") else "cpu-mid")
    preset = PRESETS[preset_name]
    steps = args.steps or preset["steps"]
    engine = build_engine(preset, args.device)
    gen_params = sum(p.numel() for p in engine.generator.parameters()) / 1e6
    clip_params = sum(p.numel() for p in engine.guide.model.parameters()) / 1e6
    print(f"preset={preset_name} device={args.device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print(f"generator {preset['generator'].img_resolution}px {gen_params:.1f}M params, "
          f"CLIP {engine.guide.input_resolution}px {clip_params:.1f}M params, "
          f"{preset['cutouts']} cutouts/job/step, {steps} steps/job")

    scheduler = BatchScheduler(engine, slots=args.jobs)
    job_steps_per_second(scheduler, preset, 1, 2)  # warm-up
    solo = job_steps_per_second(scheduler, preset, 1, steps)
    batched = job_steps_per_second(scheduler, preset, args.jobs, steps)
    scheduler.close()
    print(f"1 job alone:            {solo:7.2f} steps/s")
    print(f"{args.jobs} jobs, batched:        {batched:7.2f} job-steps/s")
    print(f"batching throughput ratio: {batched / solo:5.2f}x")

    for n in (1, args.jobs):
        jobs = []
        for i in range(n):
            job = engine.new_job(request(i, preset, steps))
            engine.start(job)
            jobs.append(job)
        engine.step(jobs)  # warm-up
        samples: list[dict[str, float]] = []
        for _ in range(3):
            phases: dict[str, float] = {}
            engine.step(jobs, phases)
            samples.append(phases)
        split = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        total = sum(split.values())
        parts = "  ".join(f"{k} {v * 1000:7.1f} ms ({v / total:4.0%})" for k, v in split.items())
        print(f"step split, batch {n}: {total * 1000:7.1f} ms | {parts}")


if __name__ == "__main__":
    main()
