"""Operator commands on the database: schema migrations and user accounts.

They only touch the database (``DataSettings``), so they work without the secret
key, next to a running server, whatever ``CLIPGAN_ENV`` says.
"""

from __future__ import annotations

from typing import Annotated

import typer

from clipgan.cli.common import Opt, data_settings, err, fail, problems

__all__ = ["db_app", "register", "users_app"]

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
users_app = typer.Typer(no_args_is_help=True, help="User accounts.")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
               ) -> None:
    """Create or update every table (SQLite or PostgreSQL, from CLIPGAN_DATABASE_URL)."""
    from web_backend.core import migrate

    url = data_settings().resolved_database_url
    migrate.upgrade(url, revision)
    err.print(f"database at revision {migrate.current(url)}", soft_wrap=True)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Undo migrations down to REVISION ('base' removes every table)."""
    from web_backend.core import migrate

    url = data_settings().resolved_database_url
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

    from web_backend.accounts import service as accounts
    from web_backend.accounts.schemas import UserCreate
    from web_backend.core import migrate
    from web_backend.core.db import make_engine, make_session_factory
    from web_backend.core.errors import ServiceError

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        body = UserCreate(username=username, email=email, password=password)
    except ValidationError as exc:
        fail(problems(exc))
    url = data_settings().resolved_database_url
    if url.startswith("sqlite"):
        migrate.upgrade(url)
    engine = make_engine(url, sqlite_synchronous=data_settings().sqlite_synchronous)
    try:
        with make_session_factory(engine, writes=True)() as session:
            accounts.register(session, body, is_admin=admin)
    except ServiceError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    err.print(f"created {'administrator' if admin else 'user'} {body.username}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(users_app, name="users")
