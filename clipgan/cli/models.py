"""Checkpoint commands: convert to our format, describe, pull the public ones."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipgan.cli.common import err, fail

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["convert", "export_onnx", "info", "list_public", "pull", "register"]

models_app = typer.Typer(no_args_is_help=True, help=(
    "Public weights: fetch, check, convert and configure them in one command."))


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


def export_onnx(
    dst: Annotated[Path, typer.Argument(help="Output .onnx path.")],
    model: Annotated[str, typer.Option(
        help="Which configured model (its checkpoint and default psi).")] = "default",
) -> None:
    """Write a model's sample path (mapping + synthesis, psi as an input, constant noise)
    to ONNX, for CLIPGAN_SAMPLE_ONNX: instant characters from a web process's CPU."""
    from ml_backend.onnx_export import export_sample_graph
    from ml_backend.settings import MLSettings, UnknownModelError
    from ml_backend.weights import CheckpointError, demo_generator_path, load_generator

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per graph pass
    settings = MLSettings()
    try:
        name, spec = settings.resolve_model(model)
    except UnknownModelError as exc:
        fail(str(exc))
    try:
        generator, ckpt = load_generator(spec.checkpoint or demo_generator_path(
            settings.data_dir))
    except CheckpointError as exc:
        fail(str(exc))
    info = export_sample_graph(generator, dst, model=name, default_psi=spec.psi,
                               demo_weights=ckpt.is_demo)
    err.print(f"wrote {dst}: model {info.model!r}, {info.resolution}px, default psi "
              f"{info.default_psi:g}{' (demo weights)' if info.demo_weights else ''}; serve it "
              f"with CLIPGAN_SAMPLE_ONNX={dst}", highlight=False, soft_wrap=True)


def _default_folder() -> Path:
    from ml_backend.settings import MLSettings

    return MLSettings().data_dir / "models"


def list_public() -> None:
    """The public weights `clipgan models pull` knows."""
    from clipgan.model_pull import CATALOG

    for weights in CATALOG.values():
        checksum = "publisher's sha256" if weights.sha256 else "sha256 recorded on pull"
        err.print(f"[bold]{weights.name}[/bold]: {weights.description} -> {weights.setting} "
                  f"({checksum})\n    {weights.url}", highlight=False, soft_wrap=True)


def pull(
    names: Annotated[list[str], typer.Argument(help="Names from `clipgan models list`.",
                                               show_default=False)],
    folder: Annotated[Path | None, typer.Option(
        "--dir", help="Where the files go; default: <CLIPGAN_DATA_DIR>/models.")] = None,
    env_file: Annotated[Path, typer.Option(
        help="Settings file the next `make run` reads; a managed block is written.")] = Path(
        ".env"),
    base_url: Annotated[str | None, typer.Option(
        envvar="CLIPGAN_MODELS_BASE_URL",
        help="A mirror serving <base-url>/<file name> instead of each publisher.")] = None,
) -> None:
    """Download public weights (resuming), check them, convert the generator, and write
    the settings so the next `make run` uses them."""
    from clipgan.model_pull import (
        CATALOG,
        ChecksumMismatch,
        DownloadInterrupted,
        DownloadRefused,
        write_env_block,
    )
    from clipgan.model_pull import pull as pull_weights
    from ml_backend.weights import CheckpointError

    unknown = [name for name in names if name not in CATALOG]
    if unknown:
        fail(f"unknown weights {', '.join(unknown)}; choose from {', '.join(CATALOG)}")
    folder = folder or _default_folder()
    settings: list[tuple[str, str]] = []
    for name in names:
        weights = CATALOG[name]
        err.print(f"{name}: {weights.description}", highlight=False)
        try:
            with _progress_bar(weights.filename) as progress:
                pulled = pull_weights(weights, folder, base_url=base_url, progress=progress)
        except DownloadInterrupted as exc:
            fail(f"{name}: the download was interrupted ({exc}); run the same command again "
                 f"to resume")
        except DownloadRefused as exc:
            fail(f"{name}: refused, {exc}; nothing was kept")
        except ChecksumMismatch as exc:
            fail(f"{name}: refused, the file does not match the publisher's checksum; "
                 f"nothing was kept ({exc})")
        except CheckpointError as exc:
            fail(f"{name}: downloaded but not a generator clipgan can read: {exc}")
        except OSError as exc:  # requests' errors are OSErrors too
            fail(f"{name}: could not download {weights.filename}: {exc}")
        check = "matches the publisher's" if pulled.verified else "recorded in SHA256SUMS"
        err.print(f"  {pulled.downloaded.name} sha256 {pulled.sha256} ({check})",
                  highlight=False, soft_wrap=True)
        if pulled.result != pulled.downloaded:
            err.print(f"  converted to {pulled.result}", highlight=False, soft_wrap=True)
        settings.append((weights.setting, str(pulled.result)))
    write_env_block(env_file, settings)
    err.print(f"wrote {', '.join(setting for setting, _ in settings)} to {env_file}: the "
              f"next `make run` (or `clipgan serve`) uses them", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _progress_bar(filename: str) -> Iterator[Callable[[int, int | None], None]]:
    """A tqdm bar on a terminal (nothing in logs)."""
    from tqdm import tqdm

    with tqdm(desc=f"  {filename}", unit="B", unit_scale=True, unit_divisor=1024,
              disable=None, file=sys.stderr, leave=False) as bar:
        def update(received: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(received - bar.n)

        yield update


def register(app: typer.Typer) -> None:
    app.command()(convert)
    app.command()(info)
    app.command("export-onnx")(export_onnx)
    models_app.command("list")(list_public)
    models_app.command()(pull)
    app.add_typer(models_app, name="models")
