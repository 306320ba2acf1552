"""Pictures made in this process: no server, no queue (``generate``, ``sample``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipgan.cli.common import Opt, err, fail, generation_request

__all__ = ["generate", "register", "sample"]

if TYPE_CHECKING:
    from ml_backend.pipeline import Pipeline
    from ml_backend.protocol import Result


def _pipeline() -> Pipeline:
    from ml_backend.pipeline import Pipeline
    from ml_backend.weights import CheckpointError

    try:
        return Pipeline.from_settings()
    except CheckpointError as exc:
        fail(str(exc))


def _save(result: Result, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.png)
    score = "" if result.score is None else f", CLIP score {result.score:.3f}"
    demo = " \\[untrained demo weights]" if result.demo_weights else ""
    err.print(f"saved {output} ({result.width}x{result.height}, seed {result.seed}{score}, "
              f"{result.timings.get('total_s', 0):.2f}s){demo}", soft_wrap=True)


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
        fail(f"image prompt {image_prompt} does not exist")
    request = generation_request(
        prompt=prompt, steps=steps, seed=seed, psi=psi, negative_prompt=negative,
        image_prompt=image_prompt.read_bytes() if image_prompt else None, model=model,
        cutouts=cutouts, upscale=upscale)
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
        fail(str(exc))
    finally:
        pipeline.close()
    _save(result, output)


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

    request = generation_request(seed=seed, psi=psi, model=model, upscale=upscale)
    pipeline = _pipeline()
    try:
        result = pipeline.sample(request)
    except UnknownModelError as exc:
        fail(str(exc))
    finally:
        pipeline.close()
    _save(result, output)


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(sample)
