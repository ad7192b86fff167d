"""`tunesmith demo`: the whole pipeline on the built-in text-to-SQL example and a tiny model."""

from __future__ import annotations

from typing import Annotated

import typer


def demo_command(
    train: Annotated[
        bool, typer.Option("--train/--no-train", help="Also fine-tune the tiny model (a few minutes).")
    ] = True,
) -> None:
    """Run the built-in example end to end: check and clean the data, then train a tiny model."""
    from tunesmith.demo import run_demo

    run_demo(train=train)
