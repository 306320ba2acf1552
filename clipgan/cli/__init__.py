"""``clipgan`` command line. Heavy imports happen inside commands, so ``--help`` is instant.

One module per command family: :mod:`~clipgan.cli.models` (checkpoints),
:mod:`~clipgan.cli.local` (pictures in this process), :mod:`~clipgan.cli.server`
(serve, web, dispatcher), :mod:`~clipgan.cli.admin` (database, users),
:mod:`~clipgan.cli.storage` (the picture store) and :mod:`~clipgan.cli.remote` (a client
of a running server), :mod:`~clipgan.cli.keys` (API keys).
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from clipgan.cli import admin, keys, local, models, remote, server, storage

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="clipgan: text to anime images with CLIP-guided StyleGAN2.")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
         ) -> None:
    from web_backend.asgi.logs import configure_logging

    configure_logging(json_format=os.environ.get("CLIPGAN_LOG_FORMAT", "text") == "json",
                      level=logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


for family in (models, local, server, admin, remote, keys, storage):
    family.register(app)
