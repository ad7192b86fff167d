"""`tunesmith model ...`: build local models for tests and demos, convert foreign checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Build tiny local models; convert llama2.c checkpoints.")


@app.command("tiny")
def tiny_command(
    out_dir: Path,
    arch: Annotated[str, typer.Option(help="llama or qwen2")] = "llama",
    preset: Annotated[str, typer.Option(help="tiny (~1M params), small (~15M) or medium (~110M)")] = "tiny",
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

    corpus = texts_from_jsonl(texts) if texts else None
    if corpus is None and tokenizer_from is None:
        from tunesmith.examples.text2sql import example_texts

        corpus = example_texts()
    path = build_tiny_model(out_dir, arch=arch, preset=preset, texts=corpus, tokenizer_from=tokenizer_from, seed=seed)
    typer.echo(f"wrote {path}")


@app.command("convert-llama2c")
def convert_llama2c_command(checkpoint: Path, tokenizer: Path, out_dir: Path) -> None:
    """Convert a llama2.c checkpoint (e.g. stories260K.bin + tok512.bin) to a transformers model."""
    from tunesmith.models.llama2c import convert_llama2c

    typer.echo(f"wrote {convert_llama2c(checkpoint, tokenizer, out_dir)}")
