"""`tunesmith model ...`: build local models for tests and demos, convert foreign checkpoints, import GGUF
files and the built-in real model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tunesmith.cli.errors import friendly_errors, readable_errors

app = typer.Typer(
    no_args_is_help=True, help="Build tiny local models; import GGUF files and built-in models; convert llama2.c."
)


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


@app.command("import")
def import_command(
    src: Annotated[Path, typer.Argument(help="A .gguf file, or a directory holding exactly one.")],
    out_dir: Annotated[Path, typer.Argument(help="The transformers directory to write (must not exist or be empty).")],
) -> None:
    """Import a GGUF file as a transformers model directory (float32 safetensors, config, tokenizer with
    its chat template). The weights are dequantised: a fine-tune starts from the quantised values."""
    from tunesmith.models.gguf import GGUFImportError, import_gguf

    with friendly_errors(), readable_errors(GGUFImportError):
        typer.echo(import_gguf(src, out_dir).summary())


@app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="A built-in model: smollm2-135m-instruct.")],
    out_dir: Annotated[Path, typer.Argument(help="The transformers directory to write (must not exist or be empty).")],
) -> None:
    """Import a built-in model (shipped inside a PyPI package, nothing downloaded) into OUT_DIR. A config
    can also name it directly (model.name_or_path: smollm2-135m-instruct): it is imported once into the cache."""
    from tunesmith.models.builtin import fetch
    from tunesmith.models.gguf import GGUFImportError

    with friendly_errors(), readable_errors(GGUFImportError):
        typer.echo(fetch(name, out_dir).summary())
