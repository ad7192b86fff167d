"""`tunesmith train CONFIG.yaml [key=value ...] [--resume]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli.errors import EXIT_BLOCKING, friendly_errors
from tunesmith.config import load_config


def train_command(
    config: Annotated[Optional[Path], typer.Argument(help="Run config YAML (default: the built-in demo config).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 lora.r=32.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from the newest complete checkpoint (default: the config's train.resume).")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Also write a merged full model (safetensors) into final/.")] = False,
) -> None:
    """Fine-tune a model on a file of examples; leaves a run directory with curves, checkpoints and the best model."""
    from tunesmith.train.recipe import TrainingStopped, train

    try:
        with friendly_errors():
            train(load_config(config, overrides or []), resume=resume, merge=merge)
    except TrainingStopped as e:
        typer.echo(f"training stopped: {e}", err=True)
        raise typer.Exit(EXIT_BLOCKING) from None
