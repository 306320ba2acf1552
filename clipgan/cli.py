"""``clipgan`` command line. Heavy imports happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="clipgan: text to anime images with CLIP-guided StyleGAN2.")
err = Console(stderr=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
         ) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="NVIDIA .pkl, rosinality .pt or clipgan file.")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors path.")],
    mapping_lr_multiplier: Annotated[float, typer.Option(
        help="Mapping lr multiplier for rosinality files, which do not store it.")] = 0.01,
) -> None:
    """Convert a generator checkpoint to clipgan's pickle-free safetensors format."""
    from ml_backend.checkpoints import CheckpointError, convert_checkpoint

    try:
        ckpt = convert_checkpoint(src, dst, mapping_lr_multiplier=mapping_lr_multiplier)
    except CheckpointError as exc:
        _fail(str(exc))
        return
    c = ckpt.config
    err.print(f"wrote {dst}: {ckpt.source_format} -> clipgan-safetensors, {c.img_resolution}px, "
              f"z/w {c.z_dim}/{c.w_dim}, {ckpt.num_parameters / 1e6:.1f} M parameters",
              soft_wrap=True)


@app.command()
def info(
    path: Annotated[Path | None, typer.Argument(
        help="Checkpoint to describe; default: the configured generator or demo weights.")] = None,
) -> None:
    """Print a checkpoint's architecture and provenance as JSON."""
    from ml_backend.checkpoints import CheckpointError, describe, read_checkpoint
    from ml_backend.demo_weights import demo_generator_path
    from ml_backend.settings import MLSettings

    if path is None:
        settings = MLSettings()
        path = settings.generator_checkpoint or demo_generator_path(settings.data_dir)
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        _fail(str(exc))
        return
    json.dump({"path": str(path), **describe(ckpt)}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    app()
