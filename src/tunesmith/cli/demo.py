"""`tunesmith demo`: the pipeline on the built-in text-to-SQL example, with a real pretrained model."""

from __future__ import annotations

from typing import Annotated

import typer


def demo_command(
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also fine-tune (the slow part).")] = True,
    tiny: Annotated[
        bool,
        typer.Option(
            "--tiny", help="Use the 1.3M-parameter random-weight Llama instead of SmolLM2-135M-Instruct (~3 min)."
        ),
    ] = False,
) -> None:
    """The whole pipeline (`tunesmith run`) on the built-in example: check, clean, split, plan, fine-tune
    SmolLM2-135M-Instruct, evaluate base vs tuned on held-out questions, blind sheet, report; ends with
    the before/after numbers. --tiny: the same on a tiny random-weight model."""
    from tunesmith.demo import run_demo

    run_demo(train=train, tiny=tiny)
