"""`tunesmith eval RUN_DIR ...` and `tunesmith eval score FILE --suite NAME ...`.

`eval` is a group whose first argument is either a command (`score`) or a run directory, so both
read naturally: anything that is not a command name runs `eval run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from tunesmith.cli.errors import EXIT_UNREADABLE, err_console, friendly_errors
from tunesmith.config import EvalConfig, JudgeConfig, SqlSuiteConfig


class _RunDirGroup(TyperGroup):
    def resolve_command(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_RunDirGroup,
    no_args_is_help=True,
    help="Evaluate a run (base vs tuned on its held-out split), or score outputs from anywhere.",
)


@app.command("run")
def run_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `tunesmith train`.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted config overrides, e.g. eval.sql.db=shop.sqlite.")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Held-out split: test (default) or val.")] = None,
    base: Annotated[
        bool | None, typer.Option("--base/--no-base", help="Also evaluate the base model (default: eval.base).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate the first N examples only.")] = None,
) -> None:
    """Answer the held-out prompts with the tuned and the base model, score both, print the difference."""
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import evaluate_run
    from tunesmith.runs import CONFIG_FILE

    with friendly_errors(), _model_errors():
        config = load_config(run_dir / CONFIG_FILE, overrides or []) if (run_dir / CONFIG_FILE).is_file() else None
        evaluate_run(run_dir, split=split, base=base, limit=limit, config=config)


@app.command("score")
def score_command(
    file: Annotated[Path, typer.Argument(help="JSONL: prediction, prompt, optional reference/baseline/db.")],
    suite: Annotated[str, typer.Option("--suite", help="sql, json, code, exact, regex, contains, judge, ...")],
    db: Annotated[str | None, typer.Option("--db", help="SQLite file or SQLAlchemy URL (sql).")] = None,
    db_dir: Annotated[str | None, typer.Option("--db-dir", help="Resolve each row's `db` in DIR (sql).")] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Accept extra columns in predictions (sql, defog's rule).")
    ] = False,
    schema: Annotated[str | None, typer.Option("--schema", help="JSON Schema file (json).")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="OpenAI-compatible base URL (judge).")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name (judge).")] = None,
    rubric: Annotated[str | None, typer.Option("--rubric", help="Rubric YAML file (judge).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the per-row results (JSONL).")] = None,
) -> None:
    """Score outputs produced anywhere. Exit 0 when scoring ran (whatever the scores), 2 on unreadable input."""
    from tunesmith.evaluate.score import score_file

    with friendly_errors():
        config = EvalConfig(
            sql=SqlSuiteConfig(db=db, db_dir=db_dir, lenient=lenient),
            json_schema=schema,
            judge=JudgeConfig(url=judge_url, model=judge_model, rubric=rubric),
        )
        result = score_file(file, suite, config, out=out)
    if as_json:
        typer.echo(json.dumps(result.summary))
        return
    for key, value in result.summary.items():
        typer.echo(f"{key:24} {value:.3f}" if isinstance(value, float) else f"{key:24} {value}")
    if out is not None:
        typer.echo(f"per-row results: {out}")


class _model_errors:  # noqa: N801
    """A model that cannot be loaded (no final/, pickled weights, a missing base) is unreadable input."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, _tb) -> bool:  # type: ignore[no-untyped-def]
        if kind is not None and issubclass(kind, OSError):
            err_console.print("[bold red]error:[/]", escape(str(error)), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_UNREADABLE)
        return False
