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
    """Run the built-in example end to end: check and clean the data, then fine-tune SmolLM2-135M-Instruct
    with LoRA and show answers to held-out questions before and after (or, with --tiny, train a tiny model)."""
    from tunesmith.demo import run_demo

    run_demo(train=train, tiny=tiny)
