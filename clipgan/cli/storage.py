"""Operator commands on the picture store: what nothing refers to any more.

Like ``clipgan db``, they need only the data settings (``CLIPGAN_DATABASE_URL``,
``CLIPGAN_STORAGE_URL``), not the secret key, and are safe next to running servers.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

import typer

from clipgan.cli.common import Opt, data_settings, err, fail

__all__ = ["register", "storage_app"]

storage_app = typer.Typer(no_args_is_help=True, help="The picture store (CLIPGAN_STORAGE_URL).")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    scaled = float(n)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000:
            return f"{scaled:,.1f} {unit}"
    return f"{scaled / 1000:,.1f} TB"


@storage_app.command("gc")
def gc(apply: Annotated[bool, Opt("--apply", help=(
           "Delete them. Default: a dry run that only says what would go."))] = False,
       grace_hours: Annotated[float, Opt(min=0.0, help=(
           "Leave objects and upload pins younger than this alone (a write may be under "
           "way)."))] = 1.0,
       ) -> None:
    """Find blobs nothing refers to (left by failures, or from before references were
    kept) and, with --apply, delete them; fill in sizes the database does not know."""
    from web_backend.core import migrate
    from web_backend.core.db import make_engine, make_session_factory
    from web_backend.storage import gc as collector
    from web_backend.storage.blobs import StoreUnavailable
    from web_backend.storage.keeper import BlobKeeper
    from web_backend.storage.stores import open_store

    settings = data_settings()
    url = settings.resolved_database_url
    if migrate.current(url) != migrate.head():
        fail("the database is not at the latest revision: run `clipgan db upgrade` first")
    engine = make_engine(url, sqlite_synchronous=settings.sqlite_synchronous)
    store = open_store(settings.storage_url, default_root=settings.dir / "blobs",
                       timeout_s=settings.storage_timeout_s)
    keeper = BlobKeeper(store=store, sessions=make_session_factory(engine, writes=True))
    try:
        found = asyncio.run(collector.plan(keeper, grace=timedelta(hours=grace_hours)))
        verb = "deleting" if apply else "would delete"
        for key, size in sorted(found.orphan_objects.items()):
            typer.echo(f"{verb} {key} {size} bytes (an object without a row)")
        for key, known in sorted(found.unreferenced.items()):
            shown = known if known is not None else found.sizes_found.get(key)
            typer.echo(f"{verb} {key} {'?' if shown is None else shown} bytes "
                       f"(a row nothing refers to)")
        for owner in found.stale_uploads:
            typer.echo(f"{'releasing' if apply else 'would release'} {owner} "
                       f"(an upload whose job was never queued)")
        err.print(f"{store.describe()}: {found.objects:,} objects, "
                  f"{_size(found.stored_bytes)}; {len(found.orphan_objects):,} without a row, "
                  f"{len(found.unreferenced):,} rows nothing refers to, "
                  f"{len(found.stale_uploads):,} stale uploads: "
                  f"{_size(found.reclaimable_bytes)} to reclaim; "
                  f"{len(found.sizes_found):,} sizes learned", soft_wrap=True)
        if not apply:
            err.print("dry run: nothing was deleted (--apply deletes)")
            return
        deleted = asyncio.run(collector.apply(keeper, found))
        err.print(f"deleted {deleted:,} blobs", soft_wrap=True)
    except StoreUnavailable as exc:
        fail(f"the picture store is unavailable: {exc}")
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    app.add_typer(storage_app, name="storage")
