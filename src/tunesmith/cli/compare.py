"""`tunesmith compare RUN_DIR`, `tunesmith review RUN_DIR`, `tunesmith unblind RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import EXIT_BLOCKING, friendly_errors
from tunesmith.config import CompareConfig

_DEFAULTS = CompareConfig()  # the config is the one source of defaults


def compare_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with eval outputs (tunesmith eval RUN_DIR).")],
    against: Annotated[
        str, typer.Option("--against", help="`base` (this run's base-model outputs) or another run directory.")
    ] = "base",
    n: Annotated[
        int, typer.Option("-n", min=1, help="Prompts on the sheet (sampled from the test outputs).")
    ] = _DEFAULTS.n,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the sample and the A/B order.")] = _DEFAULTS.seed,
    stratify_by: Annotated[
        str, typer.Option("--stratify-by", help="Metadata key for per-stratum results; `auto` tries category etc.")
    ] = _DEFAULTS.stratify_by,
    force: Annotated[bool, typer.Option("--force", help="Replace a sheet that has votes (moved aside).")] = False,
) -> None:
    """Build a blind side-by-side sheet (A/B order random per row; the key kept in a separate file)."""
    from tunesmith.compare import build_sheet

    with friendly_errors():
        sheet = build_sheet(run_dir, against=against, n=n, seed=seed, stratify_by=stratify_by, force=force)
    typer.echo(
        f"blind sheet: {sheet.items} prompts ({sheet.available} available), tuned vs {sheet.against}, in {sheet.dir}\n"
        f"  review in the browser: tunesmith review {run_dir}\n"
        f"  or mail sheet.xlsx / sheet.csv around and import the filled copies: "
        f"tunesmith unblind {run_dir} --import FILE"
    )


def review_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding a blind sheet (tunesmith compare).")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = _DEFAULTS.port,
) -> None:
    """Serve the blind-review page on http://127.0.0.1:PORT (one prompt at a time, keys a/b/t/s)."""
    from tunesmith.compare.review import HOST, review_app, serve_review

    with friendly_errors():
        review_app(run_dir)  # fail here, with a message, when there is no sheet
    typer.echo(f"blind review of {run_dir}: open http://{HOST}:{port}/  (Ctrl-C to stop; votes are saved as cast)")
    serve_review(run_dir, port=port)
    from tunesmith.compare.sheet import read_sheet
    from tunesmith.compare.votes import all_votes

    items = {r["item"] for r in read_sheet(run_dir)}
    for name, votes in all_votes(run_dir).items():
        typer.echo(f"{name}: {len(items & set(votes))} / {len(items)} voted")
    typer.echo(f"see who won: tunesmith unblind {run_dir}")


def unblind_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose sheet has votes.")],
    imports: Annotated[
        list[Path] | None,
        typer.Option("--import", help="A hand-filled sheet.csv / sheet.xlsx; repeatable. Reviewer = file name."),
    ] = None,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Reviewer name for a single --import (default: file name).")
    ] = None,
) -> None:
    """Reveal the key: tuned win rate with a 95% Wilson interval, ties, strata, agreement.
    Exit 1 when the whole interval lies below 50% (people prefer the other model)."""
    from tunesmith.compare import import_sheet, unblind
    from tunesmith.compare.unblind import format_results

    with friendly_errors():
        for path in imports or []:
            name, count = import_sheet(run_dir, path, reviewer if len(imports or []) == 1 else None)
            typer.echo(f"imported {count} votes of {name} from {path}")
        result = unblind(run_dir)
    typer.echo("\n".join(format_results(result)))
    ci = result.overall.ci95
    if ci and ci[1] < 0.5:  # a gate for pipelines: people significantly prefer the other model
        typer.echo(
            f"blind review: {result.against} is preferred (tuned win rate below 50% at 95% confidence)", err=True
        )
        raise typer.Exit(EXIT_BLOCKING)
