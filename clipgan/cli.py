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


def _request(**fields: object):
    from pydantic import ValidationError

    from ml_backend.protocol import GenerationRequest

    try:
        return GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        _fail(problems)
        raise AssertionError("unreachable") from None


def _pipeline():
    from ml_backend.checkpoints import CheckpointError
    from ml_backend.guidance import ClipLoadError
    from ml_backend.pipeline import Pipeline
    from ml_backend.upscale import UpscalerError

    try:
        return Pipeline.from_settings()
    except (CheckpointError, ClipLoadError, UpscalerError) as exc:
        _fail(str(exc))


def _save(result, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.png)
    score = "" if result.score is None else f", CLIP score {result.score:.3f}"
    demo = " \\[untrained demo weights]" if result.demo_weights else ""
    err.print(f"saved {output} ({result.width}x{result.height}, seed {result.seed}{score}, "
              f"{result.timings.get('total_s', 0):.2f}s){demo}", soft_wrap=True)


Opt = typer.Option


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="'blue hair, smile:1 | hat:-0.5' weights parts.")],
    output: Annotated[Path, Opt("--output", "-o", help="PNG to write.")] = Path("out.png"),
    steps: Annotated[int, Opt(help="Optimisation steps.")] = 60,
    seed: Annotated[str | None, Opt(help="Integer or a name; default random.")] = None,
    psi: Annotated[float | None, Opt(help="Creativity 0-2; default: the model's.")] = None,
    negative: Annotated[str | None, Opt("--negative", "-n", help="What to avoid.")] = None,
    image_prompt: Annotated[Path | None, Opt(help="Picture the result should resemble.")] = None,
    model: Annotated[str, Opt(help="Model name from settings.")] = "default",
    cutouts: Annotated[int, Opt(help="Random crops per step.")] = 32,
    upscale: Annotated[int, Opt(help="1, 2 or 4.")] = 1,
) -> None:
    """Search for the picture that best matches PROMPT and save it as a PNG."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ml_backend.guidance import GuidanceError
    from ml_backend.settings import UnknownModelError

    if image_prompt is not None and not image_prompt.is_file():
        _fail(f"image prompt {image_prompt} does not exist")
    request = _request(prompt=prompt, steps=steps, seed=seed, psi=psi, negative_prompt=negative,
                       image_prompt=image_prompt.read_bytes() if image_prompt else None,
                       model=model, cutouts=cutouts, upscale=upscale)
    pipeline = _pipeline()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TextColumn("score {task.fields[score]:.3f}"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("searching", total=request.steps, score=0.0)
            result = pipeline.generate(request, on_progress=lambda p: bar.update(
                task, completed=p.step, score=p.score))
    except (GuidanceError, UnknownModelError) as exc:
        _fail(str(exc))
        return
    finally:
        pipeline.close()
    _save(result, output)


@app.command()
def sample(
    seed: Annotated[str | None, Opt(help="Integer or a name: a name is always the same "
                                         "character.")] = None,
    output: Annotated[Path, Opt("--output", "-o", help="PNG to write.")] = Path("sample.png"),
    psi: Annotated[float | None, Opt(help="Creativity 0-2; default: the model's.")] = None,
    model: Annotated[str, Opt(help="Model name from settings.")] = "default",
    upscale: Annotated[int, Opt(help="1, 2 or 4.")] = 1,
) -> None:
    """A random character from a seed, in milliseconds (no prompt, no search)."""
    from ml_backend.settings import UnknownModelError

    request = _request(seed=seed, psi=psi, model=model, upscale=upscale)
    pipeline = _pipeline()
    try:
        result = pipeline.sample(request)
    except UnknownModelError as exc:
        _fail(str(exc))
        return
    finally:
        pipeline.close()
    _save(result, output)


if __name__ == "__main__":
    app()
