"""Serving overhead and cold start of the Ray Serve app.

Prints images/min through a real local Serve app (DeploymentHandle, streaming) next
to the same pipeline called directly in-process, for 1 and N concurrent requests,
and their ratio (Serve overhead); then replica cold-start time (deploy call to a
healthy, serving replica) with demo weights and with a TADNE-size random checkpoint
in our safetensors format.

  python bench/serve.py [--jobs 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

from ml_backend.pipeline import Pipeline
from ml_backend.protocol import GenerationRequest
from ml_backend.settings import MLSettings
from ml_backend.stylegan2 import Generator, tadne_config
from ml_backend.weights import GeneratorCheckpoint, save_checkpoint


def requests(n: int, steps: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"anime girl {i}", steps=steps, seed=i, preview_every=0)
            for i in range(n)]


def direct_images_per_minute(settings: MLSettings, n: int, steps: int) -> float:
    pipeline = Pipeline.from_settings(settings)
    pipeline.generate(requests(1, 2)[0])  # warm-up
    start = time.perf_counter()
    for handle in [pipeline.submit(r) for r in requests(n, steps)]:
        handle.result()
    elapsed = time.perf_counter() - start
    pipeline.close()
    return n * 60 / elapsed


async def _serve_round(handle, n: int, steps: int) -> float:
    async def one(request: GenerationRequest) -> None:
        async for message in handle.options(stream=True).generate.remote(request):
            if message.kind == "error":
                raise RuntimeError(message.message)

    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests(n, steps)))
    return n * 60 / (time.perf_counter() - start)


def serve_images_per_minute(handle, n: int, steps: int) -> float:
    return asyncio.run(_serve_round(handle, n, steps))


def cold_start_seconds(settings: MLSettings, name: str) -> float:
    from ray import serve

    from ml_backend.serve import build_app

    start = time.perf_counter()
    handle = serve.run(build_app(settings), name=name, route_prefix=None)
    handle.info.remote().result()
    elapsed = time.perf_counter() - start
    serve.delete(name)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-tadne", action="store_true")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ml_backend.serve import build_app

    data_dir = Path(tempfile.mkdtemp(prefix="clipgan-bench-"))
    settings = MLSettings(data_dir=data_dir, device="cpu", replica_cpus=1, min_replicas=1)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} demo weights, "
          f"{args.steps} steps/job")

    direct = {n: direct_images_per_minute(settings, n, args.steps) for n in (1, args.jobs)}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start()
    handle = serve.run(build_app(settings), name="bench", route_prefix=None)
    serve_images_per_minute(handle, 1, 2)  # warm-up
    served = {n: serve_images_per_minute(handle, n, args.steps) for n in (1, args.jobs)}
    serve.delete("bench")
    print(f"{'concurrent':>10} {'direct img/min':>15} {'serve img/min':>14} {'serve/direct':>13}")
    for n in (1, args.jobs):
        print(f"{n:>10} {direct[n]:>15.1f} {served[n]:>14.1f} {served[n] / direct[n]:>13.2f}")

    demo = cold_start_seconds(settings, "cold-demo")
    print(f"replica cold start, demo weights:            {demo:6.1f} s")
    if not args.skip_tadne:
        with torch.device("meta"):
            shapes = Generator(tadne_config()).state_dict()
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in shapes.items()}
        path = save_checkpoint(GeneratorCheckpoint(
            config=tadne_config(), state_dict=state, source_format="clipgan-safetensors",
            metadata={"note": "random TADNE-size weights for benchmarking"}),
            data_dir / "tadne-random.safetensors")
        size_mb = path.stat().st_size / 1e6
        tadne = cold_start_seconds(settings.model_copy(update={"generator_checkpoint": path}),
                                   "cold-tadne")
        print(f"replica cold start, TADNE-size ({size_mb:.0f} MB): {tadne:6.1f} s")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
