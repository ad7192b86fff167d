"""How the CLI turns library errors into a message and an exit code (no tracebacks for people)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from tunesmith.config import ConfigError
from tunesmith.data.schema import DataError

EXIT_OK, EXIT_BLOCKING, EXIT_UNREADABLE = 0, 1, 2
err_console = Console(stderr=True)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except (DataError, ConfigError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
