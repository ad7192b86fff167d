"""How the CLI turns library errors into a message and an exit code (no tracebacks for people)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from tunesmith.config import ConfigError
from tunesmith.data.schema import DataError

EXIT_OK, EXIT_BLOCKING, EXIT_UNREADABLE = 0, 1, 2
err_console = Console(stderr=True)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except (DataError, ConfigError) as e:
        _fail(str(e))
    except ValidationError as e:  # a config field set from a command-line option
        _fail("; ".join(f"{'.'.join(map(str, err['loc'])) or e.title}: {err['msg']}" for err in e.errors()))


def _fail(message: str) -> None:
    err_console.print("[bold red]error:[/]", escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_UNREADABLE) from None
