"""What every command family shares: the error console and one way to fail."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

__all__ = ["Opt", "data_settings", "err", "fail", "generation_request", "problems",
           "settings_problems", "web_settings"]

if TYPE_CHECKING:
    from pydantic import ValidationError

    from ml_backend.protocol import GenerationRequest
    from web_backend.core.settings import DataSettings, WebSettings

err = Console(stderr=True)
Opt = typer.Option


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2: what went wrong and how to fix it."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                     .replace("Value error, ", "") for e in exc.errors())


def settings_problems(exc: ValidationError) -> str:
    return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())


def web_settings() -> WebSettings:
    from pydantic import ValidationError

    from web_backend.core.settings import WebSettings

    try:
        return WebSettings()
    except ValidationError as exc:
        fail(settings_problems(exc))


def data_settings() -> DataSettings:
    """Only where data lives: commands that sign nothing do not need the secret key."""
    from pydantic import ValidationError

    from web_backend.core.settings import DataSettings

    try:
        return DataSettings()
    except ValidationError as exc:
        fail(settings_problems(exc))


def generation_request(**fields: object) -> GenerationRequest:
    from pydantic import ValidationError

    from ml_backend.protocol import GenerationRequest

    try:
        return GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        fail(problems(exc))
