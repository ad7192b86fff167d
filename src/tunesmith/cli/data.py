"""`tunesmith data ...`: convert, check, clean and show example files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from tunesmith.cli.errors import EXIT_BLOCKING, EXIT_OK, friendly_errors
from tunesmith.config import Config, ConfigError, load_config

app = typer.Typer(no_args_is_help=True, help="Read, check, clean and inspect example files.")
console = Console()

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="auto|messages|alpaca|sharegpt|prompt-completion|csv")]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", "-t", help="Hub id or directory of the model's tokenizer.")
]
MaxLenOpt = Annotated[
    int | None, typer.Option("--max-seq-len", help="Tokens per example (default: the config's data.max_seq_len).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Run config: its data section, and its model's tokenizer and chat template (as training uses them).",
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides of the config, e.g. data.max_seq_len=512 data.train_on=last."),
]


def _settings(config: Path | None, overrides: list[str] | None, input: Path, max_seq_len: int | None) -> Config:
    """The config in force for a `data` command: the file given is its data.path."""
    settings = load_config(config, overrides or [], require_inputs=False)
    settings.data.path = str(input)
    if max_seq_len is not None:
        settings.data.max_seq_len = max_seq_len
    return settings


def _tokenizer(name: str | None, settings: Config | None = None):
    """--tokenizer, else the config's model; with the config's chat template either way, so the
    check sees the template training will use."""
    model = settings.model if settings is not None else None
    name = name or (model.name_or_path if model is not None else None)
    if name is None:
        return None
    from tunesmith.data.template import load_tokenizer

    return load_tokenizer(
        name,
        chat_template=model.chat_template if model is not None else None,
        trust_remote_code=model.trust_remote_code if model is not None else False,
    )


@app.command("convert")
def convert_command(
    input: Path,
    output: Annotated[Path, typer.Option("--output", "-o", help="Messages JSONL to write.")],
    format: FormatOpt = "auto",
) -> None:
    """Convert Alpaca, ShareGPT, prompt/completion, CSV or Parquet to OpenAI messages JSONL."""
    from tunesmith.data.convert import convert_file

    with friendly_errors():
        result = convert_file(input, output, fmt=format)
    console.print(result.summary())
    raise typer.Exit(EXIT_OK if not result.failed else EXIT_BLOCKING)


@app.command("check")
def check_command(
    input: Path,
    tokenizer: TokenizerOpt = None,
    max_seq_len: MaxLenOpt = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    format: FormatOpt = "auto",
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Report what is wrong with a file of examples, and where. Exit 1 if something blocks training:
    the rows with an error are exactly the rows training drops."""
    from tunesmith.data.check import check_file
    from tunesmith.data.report import print_report, write_report_json
    from tunesmith.runs import LENGTHS_PLOT_FILE, check_outputs

    with friendly_errors():
        plot = report.parent / LENGTHS_PLOT_FILE if report else None
        check_outputs({"input": input, "--tokenizer": tokenizer}, {"--report": report, "plot": plot})
        settings = _settings(config, overrides, input, max_seq_len)
        data_config = settings.data
        result = check_file(
            input,
            config=data_config,
            tokenizer=_tokenizer(tokenizer, settings),
            fmt=format,
            plot_dir=report.parent if report else None,
            progress=True,
        )
    print_report(result, console)
    if report is not None:
        write_report_json(result, report)
        console.print(f"JSON report: {report}")
    raise typer.Exit(EXIT_BLOCKING if result.blocking else EXIT_OK)


@app.command("clean")
def clean_command(
    input: Path,
    output: Annotated[Path, typer.Option("--output", "-o", help="Clean messages JSONL to write.")],
    rejects: Annotated[Path, typer.Option("--rejects", help="Rejected rows with their line and reasons.")],
    drop: Annotated[
        str | None,
        typer.Option("--drop", help="Comma-separated finding codes to remove (default: the config's data.drop)."),
    ] = None,
    tokenizer: TokenizerOpt = None,
    max_seq_len: MaxLenOpt = None,
    format: FormatOpt = "auto",
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
) -> None:
    """Split a file into clean rows and rejects; every input row ends in exactly one of them."""
    from tunesmith.data.clean import clean_file

    with friendly_errors():
        settings = _settings(config, overrides, input, max_seq_len)
        data_config = settings.data
        if drop is not None:
            data_config.drop = [c.strip() for c in drop.split(",") if c.strip()]  # validated on assignment
        result = clean_file(
            input,
            output,
            rejects,
            config=data_config,
            tokenizer=_tokenizer(tokenizer, settings),
            fmt=format,
            progress=True,
        )
    console.print(result.summary())


@app.command("show")
def show_command(
    input: Path,
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Hub id or directory of the model's tokenizer.")],
    index: Annotated[int, typer.Option("--index", "-i", help="0-based index of the example among readable rows.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print tokens as JSON.")] = False,
    train_on: Annotated[
        Literal["all", "last"], typer.Option("--train-on", help="Which assistant turns carry loss.")
    ] = "all",
    format: FormatOpt = "auto",
) -> None:
    """Show one example exactly as the model is trained on it: trained tokens highlighted."""
    from tunesmith.data.show import conversation_at, print_token_view, to_json, token_view

    with friendly_errors():
        conversation = conversation_at(input, index, format)
        tok = _tokenizer(tokenizer)
        views = token_view(conversation, tok, train_on=train_on)
    if as_json:
        typer.echo(json.dumps(to_json(views), ensure_ascii=False))
    else:
        console.print(f"{conversation.source}", highlight=False)
        print_token_view(views, tok, console)


def _split_config(config: Path | None, overrides: dict[str, object]):
    """The config's split section (and data.near_dup_threshold) with command-line options on top."""
    loaded = load_config(config, require_inputs=False)
    split = loaded.split.model_copy()
    for key, value in overrides.items():
        if value is not None:
            setattr(split, key, value)  # validated on assignment
    return loaded, split


def _print_rows_to_read(rows: list[dict], console: Console) -> None:
    from rich.markup import escape

    if rows:
        console.print(f"[bold]{len(rows)} validation rows beside their nearest train rows (read them):[/]")
    for r in rows:
        sim = f"{r['similarity']:.3f}" if r.get("similarity") is not None else "  -  "
        console.print(f"  {sim}  val  {escape(r['val'][:120])!s}".replace("\n", " "), highlight=False)
        if "train" in r:
            console.print(f"         train {escape(r['train'][:120])!s}".replace("\n", " "), highlight=False)


@app.command("split")
def split_command(
    input: Path,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for train/val/test.jsonl and the report.")],
    val: Annotated[float | None, typer.Option("--val", help="Validation share (default: split.val, 0.1).")] = None,
    test: Annotated[float | None, typer.Option("--test", help="Test share (default: split.test, 0.1).")] = None,
    stratify_by: Annotated[
        str | None, typer.Option("--stratify-by", help="FIELD (dotted, e.g. metadata.category) | auto | none.")
    ] = None,
    similarity: Annotated[
        float | None, typer.Option("--similarity", help="Cosine that makes two rows one group (default 0.70).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the group order.")] = None,
    dedup: Annotated[
        bool | None, typer.Option("--dedup/--no-dedup", help="Keep one row per group; the rest go to rejects.")
    ] = None,
    embedder: Annotated[
        str | None, typer.Option("--embedder", help="sentence-transformers id or directory, or `none` (MinHash only).")
    ] = None,
    format: FormatOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """Split a file into train/val/test so that near duplicates and paraphrases never straddle splits."""
    from tunesmith.split import SplitError, split_file

    options = dict(val=val, test=test, stratify_by=stratify_by, similarity=similarity, seed=seed, dedup=dedup)
    with friendly_errors():
        loaded, split = _split_config(config, {**options, "embedder": embedder})
        try:
            result = split_file(
                input, out, split, near_dup_threshold=loaded.data.near_dup_threshold, fmt=format, progress=True
            )
        except SplitError as e:
            raise ConfigError(str(e)) from None
    _print_rows_to_read(result.report["rows_to_read"], console)
    console.print(result.summary(), highlight=False)


@app.command("leakage")
def leakage_command(
    train: Path,
    val: Path,
    similarity: Annotated[
        float | None, typer.Option("--similarity", help="Cosine that counts as a leak (default: split.similarity).")
    ] = None,
    embedder: Annotated[
        str | None, typer.Option("--embedder", help="sentence-transformers id or directory, or `none` (MinHash only).")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    format: FormatOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """Check a validation file against a training file for copies and paraphrases. Exit 1 when some leak."""
    from tunesmith.runs import write_json
    from tunesmith.split import check_leakage

    with friendly_errors():
        loaded, split = _split_config(config, {"similarity": similarity, "embedder": embedder})
        result = check_leakage(train, val, split, near_dup_threshold=loaded.data.near_dup_threshold, fmt=format)
    _print_rows_to_read(result.rows_to_read, console)
    leaked = [e for e in result.nearest if e["leak"]]
    for e in leaked[:10]:
        sim = f" (cosine {e['similarity']:.3f})" if "similarity" in e else ""
        console.print(f"  {val}:{e['line']} leaks: {train}:{e.get('nearest_train_line', '?')}{sim}", highlight=False)
    if len(leaked) > 10:
        console.print(f"  ... and {len(leaked) - 10} more (see --report)")
    console.print(result.headline(), highlight=False)
    if report is not None:
        write_json(report, result.to_json())
        console.print(f"JSON report: {report}")
    raise typer.Exit(EXIT_BLOCKING if result.leaked else EXIT_OK)
