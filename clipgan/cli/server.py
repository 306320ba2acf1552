"""Running the service: ``serve`` (everything here), ``web`` (the API), ``dispatcher``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clipgan.cli.common import Opt, err, fail, web_settings

__all__ = ["dispatcher", "register", "serve", "web"]


def web(
    host: Annotated[str, Opt(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.")] = 8000,
    workers: Annotated[int, Opt(help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the web backend alone (reaches the ML side per CLIPGAN_ML_TRANSPORT)."""
    import uvicorn

    web_settings()  # refuse unsafe settings before forking workers
    # proxy headers: the app trusts CLIPGAN_FORWARDED_ALLOW_IPS only (none by default);
    # streams end themselves on shutdown, the timeout is the backstop
    uvicorn.run("web_backend.app:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, proxy_headers=False, timeout_graceful_shutdown=15)


def _print_banner(handle: Any, url: str, data_dir: Path) -> None:
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
    from web_backend.jobs.ml_client import HandleMLClient

    try:
        mode = GeneratorMode(generator)
    except ValueError:
        fail(f"--generator must be 'ray' or 'in-process', not {generator!r}")
    os.environ.setdefault("CLIPGAN_ENV", "dev")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = web_settings()
    ml_settings = MLSettings()
    err.print(f"starting the generator ({mode.value}; demo weights unless configured)...")
    try:
        with local_generator(ml_settings, mode) as handle:
            api = create_app(settings, ml_client=HandleMLClient(handle))
            _print_banner(handle, f"http://{host}:{port}", settings.data.dir)
            uvicorn.run(api, host=host, port=port, log_level="info", access_log=False,
                        proxy_headers=False, timeout_graceful_shutdown=15)
    except LocalClusterError as exc:
        fail(str(exc))
    err.print("stopped")


def dispatcher(
    capacity: Annotated[int | None, Opt(help=(
        "Jobs at once; default: what the ML side reports, else CLIPGAN_ML_SLOTS."))] = None,
) -> None:
    """Run queued jobs on the ML side (CLIPGAN_ML_TRANSPORT), without serving the API."""
    import asyncio
    import signal

    from web_backend.app import build_services, make_dispatcher
    from web_backend.jobs.ml_client import NoMLClient

    settings = web_settings()
    if settings.ml.transport == "none":
        fail("no ML side configured: set CLIPGAN_ML_TRANSPORT to ray or http")
    services = build_services(settings)
    if isinstance(services.ml, NoMLClient):  # pragma: no cover (settings said otherwise)
        fail("no ML side configured")
    worker = make_dispatcher(services, capacity=capacity)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        err.print(f"dispatcher {worker.owner} running (capacity {worker.capacity})")
        await worker.run()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command()(web)
    app.command()(serve)
    app.command()(dispatcher)
