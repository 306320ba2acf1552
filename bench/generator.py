"""Generator throughput: images/s at batch 1 and 8, small config and TADNE size.

Random weights (speed does not depend on what the weights learned). Prints one
table; run `python bench/generator.py --help` for options.
"""

from __future__ import annotations

import argparse
import time

import torch

from ml_backend.stylegan2 import Generator, GeneratorConfig, tadne_config

CONFIGS = {
    "small-64px": GeneratorConfig(z_dim=64, w_dim=64, img_resolution=64, mapping_layers=2,
                                  channels=(128, 128, 64, 64, 32)),
    "mid-256px": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, mapping_layers=8,
                                 channel_base=16384, channel_max=512),
    "tadne-512px": tadne_config(),
}


def images_per_second(generator: Generator, batch: int, device: str, min_seconds: float,
                      ) -> float:
    z = torch.randn(batch, generator.config.z_dim, device=device)
    with torch.inference_mode():
        generator(z)  # warm-up: allocator, kernels, cudnn autotune
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while True:
            generator(z)
            runs += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and runs >= 2:
                return runs * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()

    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'config':<14}{'params':>10}{'batch':>7}{'images/s':>11}{'ms/image':>10}")
    for name in args.configs:
        config = CONFIGS[name]
        with torch.device(args.device):
            generator = Generator(config).eval().requires_grad_(False)
        params = sum(p.numel() for p in generator.parameters()) / 1e6
        for batch in args.batches:
            ips = images_per_second(generator, batch, args.device, args.min_seconds)
            print(f"{name:<14}{params:>9.1f}M{batch:>7}{ips:>11.2f}{1000 / ips:>10.1f}",
                  flush=True)
        del generator


if __name__ == "__main__":
    main()
