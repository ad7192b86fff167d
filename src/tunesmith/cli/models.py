"""`tunesmith model ...`: build local models for tests and demos, convert foreign checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tunesmith.cli.errors import friendly_errors, readable_errors

app = typer.Typer(no_args_is_help=True, help="Build tiny local models; convert llama2.c checkpoints.")


@app.command("tiny")
def tiny_command(
    out_dir: Path,
    arch: Annotated[Literal["llama", "qwen2"], typer.Option(help="llama or qwen2")] = "llama",
    preset: Annotated[
        Literal["tiny", "small", "medium"], typer.Option(help="tiny (~1M params), small (~15M) or medium (~110M)")
    ] = "tiny",
    texts: Annotated[
        Path | None,
        typer.Option(
            help="Messages JSONL whose text trains the tokenizer (default: the built-in text-to-SQL example)."
        ),
    ] = None,
    tokenizer_from: Annotated[
        Path | None, typer.Option(help="Copy this tokenizer directory instead of training one.")
    ] = None,
    seed: int = 0,
) -> None:
    """Build a small model of a real architecture with random weights and a real chat template."""
    from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl

    with friendly_errors():
        corpus = texts_from_jsonl(texts) if texts else None
        if corpus is None and tokenizer_from is None:
            from tunesmith.examples.text2sql import example_texts

            corpus = example_texts()
        path = build_tiny_model(
            out_dir, arch=arch, preset=preset, texts=corpus, tokenizer_from=tokenizer_from, seed=seed
        )
    typer.echo(f"wrote {path}")


@app.command("convert-llama2c")
def convert_llama2c_command(checkpoint: Path, tokenizer: Path, out_dir: Path) -> None:
    """Convert a llama2.c checkpoint (e.g. stories260K.bin + tok512.bin) to a transformers model."""
    from tunesmith.models.llama2c import Llama2cFormatError, convert_llama2c

    with friendly_errors(), readable_errors(Llama2cFormatError):
        path = convert_llama2c(checkpoint, tokenizer, out_dir)
    typer.echo(f"wrote {path}")
