"""Checkpoint commands: convert to our format, describe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from clipgan.cli.common import err, fail

__all__ = ["convert", "info", "register"]


def convert(
    src: Annotated[Path, typer.Argument(help="NVIDIA .pkl, rosinality .pt or clipgan file.")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors path.")],
    mapping_lr_multiplier: Annotated[float, typer.Option(
        help="Mapping lr multiplier for rosinality files, which do not store it.")] = 0.01,
) -> None:
    """Convert a generator checkpoint to clipgan's pickle-free safetensors format."""
    from ml_backend.weights import CheckpointError, convert_checkpoint

    try:
        ckpt = convert_checkpoint(src, dst, mapping_lr_multiplier=mapping_lr_multiplier)
    except CheckpointError as exc:
        fail(str(exc))
    c = ckpt.config
    err.print(f"wrote {dst}: {ckpt.source_format} -> clipgan-safetensors, {c.img_resolution}px, "
              f"z/w {c.z_dim}/{c.w_dim}, {ckpt.num_parameters / 1e6:.1f} M parameters",
              soft_wrap=True)


def info(
    path: Annotated[Path | None, typer.Argument(
        help="Checkpoint to describe; default: the configured generator or demo weights.")] = None,
) -> None:
    """Print a checkpoint's architecture and provenance as JSON."""
    from ml_backend.settings import MLSettings
    from ml_backend.weights import CheckpointError, demo_generator_path, describe, read_checkpoint

    if path is None:
        settings = MLSettings()
        path = settings.generator_checkpoint or demo_generator_path(settings.data_dir)
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        fail(str(exc))
    json.dump({"path": str(path), **describe(ckpt)}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def register(app: typer.Typer) -> None:
    app.command()(convert)
    app.command()(info)
