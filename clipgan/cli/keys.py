"""``clipgan keys create|list|revoke``: API keys for programs, made by signing in with the
account's password on a running server (a key cannot make keys)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from clipgan.cli.common import Opt, err, fail

if TYPE_CHECKING:
    from clipgan.client import ClipganClient

__all__ = ["keys_app", "register"]

keys_app = typer.Typer(no_args_is_help=True, help="API keys for programs (bots, scripts).")
UrlOpt = Annotated[str, Opt("--url", envvar="CLIPGAN_URL", help="Server address.")]
UserOpt = Annotated[str, Opt("--username", envvar="CLIPGAN_USERNAME")]
PasswordOpt = Annotated[str, Opt("--password", envvar="CLIPGAN_PASSWORD",
                                 help="Default: asked for.")]


def _client(url: str, username: str, password: str) -> ClipganClient:
    from clipgan.client import ClipganClient

    if not username:
        fail("give --username (or CLIPGAN_USERNAME): keys are made by signing in")
    client = ClipganClient(url, api_key="")  # a key in the environment cannot make keys
    client.sign_in(username, password or typer.prompt("password", hide_input=True))
    return client


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="To recognise the key by, e.g. 'discord bot'.")],
    url: UrlOpt = "http://127.0.0.1:8000", username: UserOpt = "", password: PasswordOpt = "",
    read_only: Annotated[bool, Opt("--read-only", help="Only jobs:read.")] = False,
    expires_in_days: Annotated[int | None, Opt("--expires-in-days")] = None,
) -> None:
    """Make a key and print it (once: only its hash is kept)."""
    from clipgan.client import ClientError

    try:
        made = _client(url, username, password).create_key(
            name, scopes=["jobs:read"] if read_only else None, expires_in_days=expires_in_days)
    except (ClientError, OSError) as exc:
        fail(str(exc))
    err.print(f"key {made['id']} ({', '.join(made['scopes'])}); shown only now:",
              highlight=False)
    typer.echo(made["key"])


@keys_app.command("list")
def keys_list(url: UrlOpt = "http://127.0.0.1:8000", username: UserOpt = "",
              password: PasswordOpt = "") -> None:
    """List your keys (one JSON object per line; never their secrets)."""
    from clipgan.client import ClientError

    try:
        for key in _client(url, username, password).list_keys():
            typer.echo(json.dumps(key))
    except (ClientError, OSError) as exc:
        fail(str(exc))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `list`).")],
                url: UrlOpt = "http://127.0.0.1:8000", username: UserOpt = "",
                password: PasswordOpt = "") -> None:
    """Revoke a key: it stops working at once."""
    from clipgan.client import ClientError

    try:
        _client(url, username, password).revoke_key(key_id)
    except (ClientError, OSError) as exc:
        fail(str(exc))
    err.print(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
