"""`tunesmith run CONFIG.yaml [key=value ...]`: the whole pipeline, stopping at the first failed gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunesmith.cli.errors import EXIT_BLOCKING, EXIT_INTERRUPTED, friendly_errors
from tunesmith.config import load_config


def run_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 pipeline.retrain=true.")
    ] = None,
) -> None:
    """check → clean → split → plan → train → eval → compare → report; run again to resume where it stopped."""
    from tunesmith.pipeline import print_summary, run_pipeline
    from tunesmith.train.recipe import TrainingInterrupted

    console = Console(highlight=False)
    try:
        with friendly_errors():
            result = run_pipeline(load_config(config, overrides or []), console=console)
    except TrainingInterrupted as e:
        typer.echo(f"{e}; run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print_summary(result, console)
    if result.stopped:
        raise typer.Exit(EXIT_BLOCKING)
