"""A client of a running server: ``clipgan client generate|sample`` (REST, SSE progress),
``webhook-secret`` and ``listen`` (a verifying webhook receiver to try webhooks with)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clipgan.cli.common import Opt, err, fail

__all__ = ["client_app", "register"]

client_app = typer.Typer(no_args_is_help=True, help="Talk to a running clipgan server.")
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
        fail("give --username (or CLIPGAN_USERNAME)")
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

            def show(event: str, job: dict[str, Any]) -> None:
                position = job.get("queue_position")
                label = f"queued (#{position})" if position else job["status"]
                bar.update(task, description=label, completed=job["progress"]["step"])

            job, png = client.generate(request, on_event=show)
    except (ClientError, OSError) as exc:
        fail(str(exc))
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
        fail(str(exc))
    output.write_bytes(png)
    err.print(f"saved {output}")


@client_app.command("webhook-secret")
def client_webhook_secret(
    url: UrlOpt = "http://127.0.0.1:8000",
    username: Annotated[str, Opt(envvar="CLIPGAN_USERNAME")] = "",
    password: Annotated[str, Opt(envvar="CLIPGAN_PASSWORD", help="Default: asked for.")] = "",
) -> None:
    """Make a new webhook signing secret and print it (once: the old one stops working)."""
    from clipgan.client import ClientError, ClipganClient

    if not username:
        fail("give --username (or CLIPGAN_USERNAME)")
    client = ClipganClient(url)
    try:
        client.sign_in(username, password or typer.prompt("password", hide_input=True))
        typer.echo(client.new_webhook_secret())
    except (ClientError, OSError) as exc:
        fail(str(exc))


@client_app.command("listen")
def client_listen(
    secret: Annotated[str, Opt(envvar="CLIPGAN_WEBHOOK_SECRET", help="whsec_... from "
                               "`clipgan client webhook-secret`.")],
    port: Annotated[int, Opt()] = 9000,
    host: Annotated[str, Opt()] = "127.0.0.1",
) -> None:
    """Receive webhooks: verify each signature, print the verified events (one JSON line
    each), refuse the rest with 400."""
    import json

    from clipgan.webhooks import Receiver

    def show(webhook_id: str, event: dict[str, Any]) -> None:
        data = event.get("data", {})
        typer.echo(json.dumps({"webhook_id": webhook_id, "type": event.get("type"),
                               "job": data.get("id"), "status": data.get("status"),
                               "image_url": data.get("image_url")}), nl=True)

    try:
        receiver = Receiver(secret, show, host=host, port=port)
    except Exception as exc:  # a malformed secret, a port in use
        fail(f"cannot listen: {exc}")
    err.print(f"listening on http://{host}:{receiver.port}/ (Ctrl-C to stop)")
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()


def register(app: typer.Typer) -> None:
    app.add_typer(client_app, name="client")
