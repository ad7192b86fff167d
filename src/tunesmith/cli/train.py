"""`tunesmith train CONFIG.yaml [key=value ...] [--resume]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import EXIT_BLOCKING, EXIT_INTERRUPTED, friendly_errors
from tunesmith.config import load_config


def train_command(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML (default: the built-in demo config).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=1e-4 lora.r=32.")
    ] = None,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Continue from the newest complete checkpoint (default: the config's train.resume).",
        ),
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write a merged full model (safetensors) into final/.")
    ] = False,
    num_processes: Annotated[
        int, typer.Option("--num-processes", "-n", help="Data-parallel processes (re-launches itself).")
    ] = 1,
    launcher: Annotated[
        str, typer.Option("--launcher", help="torchrun (DDP, CPU or GPU) or accelerate (DeepSpeed/FSDP).")
    ] = "torchrun",
    accelerate_config: Annotated[
        str | None, typer.Option("--accelerate-config", help="deepspeed_zero2, deepspeed_zero3 or fsdp.")
    ] = None,
) -> None:
    """Fine-tune a model on a file of examples; leaves a run directory with curves, checkpoints and the best model."""
    if config is not None and "=" in config.name and not config.exists():  # `tunesmith train key=value ...`
        overrides, config = [str(config), *(overrides or [])], None
    if num_processes > 1 or launcher != "torchrun" or accelerate_config:
        _relaunch(config, overrides, resume, merge, num_processes, launcher, accelerate_config)
    from tunesmith.split import LeakageError
    from tunesmith.train.recipe import TrainingInterrupted, TrainingStopped, train

    try:
        with friendly_errors():
            train(load_config(config, overrides or []), resume=resume, merge=merge)
    except TrainingStopped as e:
        typer.echo(f"training stopped: {e}", err=True)
        raise typer.Exit(EXIT_BLOCKING) from None
    except TrainingInterrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except LeakageError as e:  # a guard rail, like TrainingStopped: exit 1
        typer.echo(f"training not started: {e}", err=True)
        raise typer.Exit(EXIT_BLOCKING) from None


def _relaunch(config, overrides, resume, merge, num_processes, launcher, accelerate_config) -> None:
    import os
    import subprocess

    from tunesmith.train.launch import launch_command

    args = [str(config)] if config else []
    args += list(overrides or [])
    args += [] if resume is None else ["--resume" if resume else "--no-resume"]
    args += ["--merge"] if merge else []
    with friendly_errors():
        cmd = launch_command(args, num_processes=num_processes, launcher=launcher, accelerate_config=accelerate_config)
    typer.echo(" ".join(cmd), err=True)
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
