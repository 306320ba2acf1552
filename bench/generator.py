"""Generator throughput: images/s at batch 1 and 8, small config and TADNE size.

Per precision (fp32, and bf16 autocast as the search runs it), with FLOPs per image
counted by torch (bench/flops.py), achieved TFLOP/s and, on a known GPU, % of its
dense bf16 peak. Random weights (speed does not depend on what the weights learned).
Prints one table; run `python bench/generator.py --help` for options.

On the CPU it also runs each config's sample graph (`clipgan export-onnx`: mapping +
synthesis, psi as an input, batch 1) in ONNX Runtime with the same number of threads,
next to torch: what a web process serving `CLIPGAN_SAMPLE_ONNX` gets per core budget.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from flops import count_flops, describe_rate, peak_tflops

from ml_backend.precision import Precision
from ml_backend.stylegan2 import Generator, GeneratorConfig, tadne_config

CONFIGS = {
    "small-64px": GeneratorConfig(z_dim=64, w_dim=64, img_resolution=64, mapping_layers=2,
                                  channels=(128, 128, 64, 64, 32)),
    "mid-256px": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, mapping_layers=8,
                                 channel_base=16384, channel_max=512),
    "tadne-512px": tadne_config(),
}


def forward(generator: Generator, z: torch.Tensor, precision: Precision) -> torch.Tensor:
    """What the search's fast path runs: under autocast, the checkpoint's fp16 blocks off."""
    with precision.autocast():
        return generator.synthesize(generator.map(z), force_fp32=precision.reduced)


def images_per_second(generator: Generator, batch: int, device: str, min_seconds: float,
                      precision: Precision) -> float:
    z = torch.randn(batch, generator.config.z_dim, device=device)
    with torch.inference_mode():
        forward(generator, z, precision)  # warm-up: allocator, kernels, cudnn autotune
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while True:
            forward(generator, z, precision)
            runs += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and runs >= 2:
                return runs * batch / elapsed


def flops_per_image(generator: Generator, device: str, precision: Precision) -> int:
    z = torch.randn(2, generator.config.z_dim, device=device)
    with torch.inference_mode():
        return count_flops(lambda: forward(generator, z, precision)) // 2


def onnx_images_per_second(generator: Generator, min_seconds: float, threads: int) -> float:
    """The exported sample graph in ONNX Runtime (CPU), batch 1."""
    import numpy as np
    import onnxruntime

    from ml_backend.onnx_export import export_sample_graph

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sample.onnx"
        export_sample_graph(generator, path, model="bench", default_psi=1.0, demo_weights=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
    feed = {"z": np.random.randn(1, generator.config.z_dim).astype(np.float32),
            "psi": np.ones(1, dtype=np.float32)}
    session.run(None, feed)  # warm-up
    runs, start = 0, time.perf_counter()
    while True:
        session.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 2:
            return runs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                        default=None, help="default: fp32 and bf16 on CUDA, fp32 on CPU "
                        "(CPUs without bf16 units run it ~20x slower)")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                        help="also ONNX Runtime CPU, batch 1 (default: on the CPU)")
    args = parser.parse_args()
    with_onnx = args.onnx if args.onnx is not None else args.device == "cpu"

    precisions = args.precisions or (["fp32", "bf16"] if args.device.startswith("cuda")
                                     else ["fp32"])
    device_name, peak = peak_tflops(args.device)
    print(f"device={args.device} ({device_name}) torch={torch.__version__} "
          f"threads={torch.get_num_threads()} dense bf16 peak="
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown'}")
    print(f"{'config':<14}{'params':>10}{'precision':>10}{'batch':>7}{'images/s':>11}"
          f"{'ms/image':>10}{'GFLOP/image':>13}  achieved")
    for name in args.configs:
        config = CONFIGS[name]
        with torch.device(args.device):
            generator = Generator(config).eval().requires_grad_(False)
        params = sum(p.numel() for p in generator.parameters()) / 1e6
        for precision_name in precisions:
            precision = Precision.resolve(precision_name, args.device)
            precision.configure_device()
            flops = flops_per_image(generator, args.device, precision)
            for batch in args.batches:
                ips = images_per_second(generator, batch, args.device, args.min_seconds,
                                        precision)
                print(f"{name:<14}{params:>9.1f}M{precision_name:>10}{batch:>7}{ips:>11.2f}"
                      f"{1000 / ips:>10.1f}{flops / 1e9:>13.1f}  "
                      f"{describe_rate(flops * ips, 1.0, peak)}", flush=True)
        if with_onnx:
            flops = flops_per_image(generator.cpu(), "cpu", Precision.resolve("fp32", "cpu"))
            ips = onnx_images_per_second(generator.cpu(), args.min_seconds,
                                         torch.get_num_threads())
            print(f"{name:<14}{params:>9.1f}M{'ort-fp32':>10}{1:>7}{ips:>11.2f}"
                  f"{1000 / ips:>10.1f}{flops / 1e9:>13.1f}  "
                  f"{describe_rate(flops * ips, 1.0, None)}", flush=True)
        del generator


if __name__ == "__main__":
    main()
