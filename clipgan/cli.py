"""``clipgan`` command line. Heavy imports happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="clipgan: text to anime images with CLIP-guided StyleGAN2.")
err = Console(stderr=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
         ) -> None:
    import os

    from web_backend.logs import configure_logging

    configure_logging(json_format=os.environ.get("CLIPGAN_LOG_FORMAT", "text") == "json",
                      level=logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _fail(message: str) -> NoReturn:
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


db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
users_app = typer.Typer(no_args_is_help=True, help="User accounts.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")


def _web_settings():
    from pydantic import ValidationError

    from web_backend.settings import WebSettings

    try:
        return WebSettings()
    except ValidationError as exc:
        _fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


def _database_url() -> str:
    from pydantic import ValidationError

    from web_backend.settings import DatabaseSettings

    try:
        return DatabaseSettings().resolved_database_url
    except ValidationError as exc:
        _fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
               ) -> None:
    """Create or update every table (SQLite or PostgreSQL, from CLIPGAN_DATABASE_URL)."""
    from web_backend import migrate

    url = _database_url()
    migrate.upgrade(url, revision)
    err.print(f"database at revision {migrate.current(url)}", soft_wrap=True)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Undo migrations down to REVISION ('base' removes every table)."""
    from web_backend import migrate

    url = _database_url()
    migrate.downgrade(url, revision)
    err.print(f"database at revision {migrate.current(url)}", soft_wrap=True)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="3-32 of A-Z a-z 0-9 _ . -")],
    email: Annotated[str, typer.Argument()],
    admin: Annotated[bool, Opt("--admin", help="Give administrator rights.")] = False,
    password: Annotated[str | None, Opt(envvar="CLIPGAN_NEW_PASSWORD", help=(
        "Default: asked for without echo."))] = None,
) -> None:
    """Create an account (the first administrator, for instance)."""
    from pydantic import ValidationError
    from sqlalchemy import or_, select

    from web_backend import migrate
    from web_backend.db import make_engine, make_session_factory
    from web_backend.models import User
    from web_backend.schemas import UserCreate
    from web_backend.security import hash_password

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        body = UserCreate(username=username, email=email, password=password)
    except ValidationError as exc:
        _fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors()))
        return
    url = _database_url()
    if url.startswith("sqlite"):
        migrate.upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        if session.scalar(select(User).where(or_(User.username == body.username,
                                                 User.email == body.email.lower()))):
            _fail("that username or email is already registered")
        session.add(User(username=body.username, email=body.email.lower(), is_admin=admin,
                         password_hash=hash_password(body.password)))
        session.commit()
    engine.dispose()
    err.print(f"created {'administrator' if admin else 'user'} {body.username}")


@app.command()
def web(
    host: Annotated[str, Opt(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.")] = 8000,
    workers: Annotated[int, Opt(help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the web backend alone (reaches the ML side per CLIPGAN_ML_TRANSPORT)."""
    import uvicorn

    _web_settings()  # refuse unsafe settings before forking workers
    uvicorn.run("web_backend.app:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, proxy_headers=False)


def _print_banner(handle, url: str, data_dir: Path) -> None:
    # the replica's own log lines stay in Ray's log files: repeat what matters here
    for name, model in handle.info.remote().result()["models"].items():
        if model["demo_weights"]:
            err.print(f"[yellow]model {name!r}: UNTRAINED DEMO WEIGHTS[/yellow], pictures are "
                      "noise-like; set CLIPGAN_GENERATOR_CHECKPOINT for real ones",
                      soft_wrap=True)
    err.print(f"\nclipgan is running at {url}  (API docs: /docs)\n"
              "create an account:  .venv/bin/clipgan users create NAME EMAIL [--admin]\n"
              f"or POST /v1/users; data lives in {data_dir.resolve()}; Ctrl-C stops\n",
              soft_wrap=True)


@app.command()
def serve(
    host: Annotated[str, Opt(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.")] = 8000,
    generator: Annotated[str, Opt(
        envvar="CLIPGAN_SERVE_GENERATOR",
        help="'ray': a private local Ray cluster runs the Serve app (as in production); "
             "'in-process': Serve's local testing mode, faster to start.")] = "ray",
) -> None:
    """Everything on this machine in one process tree: the generator (Serve app on a
    private local Ray), the API and the dispatcher, on SQLite and local files. Dev mode
    unless CLIPGAN_ENV says otherwise. Ctrl-C stops it all; the next start finds the
    same users and jobs."""
    import os

    import uvicorn

    from ml_backend.local_cluster import GeneratorMode, LocalClusterError, local_generator
    from ml_backend.settings import MLSettings
    from web_backend.app import create_app
    from web_backend.ml_client import HandleMLClient

    try:
        mode = GeneratorMode(generator)
    except ValueError:
        _fail(f"--generator must be 'ray' or 'in-process', not {generator!r}")
        return
    os.environ.setdefault("CLIPGAN_ENV", "dev")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    web_settings = _web_settings()
    ml_settings = MLSettings()
    err.print(f"starting the generator ({mode.value}; demo weights unless configured)...")
    try:
        with local_generator(ml_settings, mode) as handle:
            api = create_app(web_settings, ml_client=HandleMLClient(handle))
            _print_banner(handle, f"http://{host}:{port}", web_settings.data_dir)
            uvicorn.run(api, host=host, port=port, log_level="info", access_log=False)
    except LocalClusterError as exc:
        _fail(str(exc))
    err.print("stopped")


@app.command()
def dispatcher(
    capacity: Annotated[int | None, Opt(help="Jobs at once; default CLIPGAN_ML_SLOTS.")] = None,
) -> None:
    """Run queued jobs on the ML side (CLIPGAN_ML_TRANSPORT), without serving the API."""
    import asyncio
    import signal

    from web_backend.app import build_services
    from web_backend.dispatcher import Dispatcher
    from web_backend.ml_client import NoMLClient, ml_client_from_settings

    settings = _web_settings()
    ml = ml_client_from_settings(
        settings.ml_transport, ray_address=settings.ray_address, app_name=settings.ml_app_name,
        url=settings.ml_url,
        secret=settings.ml_secret.get_secret_value() if settings.ml_secret else None)
    if isinstance(ml, NoMLClient):
        _fail("no ML side configured: set CLIPGAN_ML_TRANSPORT to ray or http")
    services = build_services(settings, ml)
    worker = Dispatcher(services, ml, capacity=capacity or settings.ml_slots,
                        policy=settings.dispatch_policy())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        err.print(f"dispatcher {worker.owner} running (capacity {worker.capacity})")
        await worker.run()

    asyncio.run(main())


client_app = typer.Typer(no_args_is_help=True, help="Talk to a running clipgan server.")
app.add_typer(client_app, name="client")
UrlOpt = Annotated[str, Opt("--url", envvar="CLIPGAN_URL", help="Server address.")]


@client_app.command("generate")
def client_generate(
    prompt: Annotated[str, typer.Argument(help="What the picture should show.")],
    output: Annotated[Path, Opt("--output", "-o")] = Path("out.png"),
    url: UrlOpt = "http://127.0.0.1:8000",
    username: Annotated[str, Opt(envvar="CLIPGAN_USERNAME")] = "",
    password: Annotated[str, Opt(envvar="CLIPGAN_PASSWORD", help="Default: asked for.")] = "",
    steps: Annotated[int, Opt()] = 60,
    seed: Annotated[str | None, Opt()] = None,
    psi: Annotated[float | None, Opt()] = None,
    negative: Annotated[str | None, Opt("--negative", "-n")] = None,
    model: Annotated[str, Opt()] = "default",
) -> None:
    """Submit a job to a server, follow its progress, save the PNG."""
    from rich.progress import BarColumn, Progress, TextColumn

    from clipgan.client import ClientError, ClipganClient

    if not username:
        _fail("give --username (or CLIPGAN_USERNAME)")
    password = password or typer.prompt("password", hide_input=True)
    request = {k: v for k, v in {"prompt": prompt, "steps": steps, "seed": seed, "psi": psi,
                                 "negative_prompt": negative, "model": model}.items()
               if v is not None}
    client = ClipganClient(url)
    try:
        client.sign_in(username, password)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), console=err,
                      transient=True) as bar:
            task = bar.add_task("queued", total=steps)

            def show(event: str, job: dict) -> None:
                position = job.get("queue_position")
                label = f"queued (#{position})" if position else job["status"]
                bar.update(task, description=label, completed=job["progress"]["step"])

            job, png = client.generate(request, on_event=show)
    except (ClientError, OSError) as exc:
        _fail(str(exc))
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png)
    err.print(f"saved {output} (job {job['id']}, seed {job['seed']})", soft_wrap=True)


@client_app.command("sample")
def client_sample(
    seed: Annotated[str | None, Opt(help="A name is always the same character.")] = None,
    output: Annotated[Path, Opt("--output", "-o")] = Path("sample.png"),
    url: UrlOpt = "http://127.0.0.1:8000",
    psi: Annotated[float | None, Opt()] = None,
) -> None:
    """Fetch an instant random character from a server."""
    from clipgan.client import ClientError, ClipganClient

    try:
        png = ClipganClient(url).sample(seed=seed, psi=psi)
    except (ClientError, OSError) as exc:
        _fail(str(exc))
        return
    output.write_bytes(png)
    err.print(f"saved {output}")


if __name__ == "__main__":
    app()
