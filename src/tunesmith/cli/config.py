"""`tunesmith config show [CONFIG] [key=value ...] [--defaults]`: every knob and its meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import friendly_errors

app = typer.Typer(no_args_is_help=True, help="Show the resolved config, every field with its documentation.")


@app.command("show")
def show_command(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4.")] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="Every default, ignoring CONFIG.")] = False,
) -> None:
    """Print the resolved config as YAML, each field's documentation as a comment above it. The
    output is itself a valid config (with --defaults, once model and data are named)."""
    from tunesmith.config import commented_yaml, default_config, load_config

    with friendly_errors():
        resolved = default_config() if defaults else load_config(config, overrides or [])
    typer.echo(commented_yaml(resolved), nl=False)
