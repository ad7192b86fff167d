"""`tunesmith runs [list | show RUN | diff A B]` over a runs directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.errors import friendly_errors

app = typer.Typer(no_args_is_help=False, help="The runs of a runs directory: list, show one, diff two.")
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Directory holding the runs.")]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


@app.callback(invoke_without_command=True)
def runs_main(ctx: typer.Context, runs_dir: RunsDir = Path("runs")) -> None:
    """Without a subcommand: the list."""
    if ctx.invoked_subcommand is None:
        list_command(runs_dir)


@app.command("list")
def list_command(runs_dir: RunsDir = Path("runs")) -> None:
    """One line per run: when, data fingerprint, key metrics, guard rails fired."""
    from tunesmith.report.index import list_runs

    with friendly_errors():
        rows = list_runs(runs_dir)
    if not rows:
        typer.echo(f"no runs in {runs_dir}")
        return
    # Plain aligned text (not a Rich table): it stays readable in 80 columns, in logs and under grep.
    evals = sorted(
        {
            k.removeprefix("eval.")
            for r in rows
            for k in r["metrics"]
            if k.startswith("eval.") and not k.endswith(".base")
        }
    )
    header = ["run", "started", "data", "val loss", "stop", *evals, "blind win", "guard rails"]
    lines = []
    for r in rows:
        m = r["metrics"]
        cells = [
            r["run"],
            _fmt(r["started"])[:16],
            _fmt(r["data_sha256"])[:8],
            _fmt(m.get("train.best_val_loss")),
            _fmt(m.get("train.stop_reason")),
        ]
        for k in evals:
            tuned, base = m.get(f"eval.{k}"), m.get(f"eval.{k}.base")
            cells.append(_fmt(tuned) + ("" if base is None else f" ({_fmt(base)})"))
        cells += [_fmt(m.get("blind.win_rate")), str(len(r["guard_rails"]))]
        lines.append(cells)
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, *lines]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if evals:
        typer.echo("eval columns: tuned (base)")


@app.command("show")
def show_command(
    run: Annotated[str, typer.Argument(help="Run name or directory.")], runs_dir: RunsDir = Path("runs")
) -> None:
    """One run: its stages, data fingerprint, key metrics, guard rails."""
    from tunesmith.report.index import resolve_run, show_run

    with friendly_errors():
        info = show_run(resolve_run(run, runs_dir))
    typer.echo(f"run {info['run']}  ({info['dir']}, started {_fmt(info['started'])})")
    typer.echo("stages: " + ", ".join(f"{k} {'yes' if v else '-'}" for k, v in info["stages"].items()))
    for k, v in info["data"].items():
        typer.echo(f"data.{k}: {v}")
    for k, v in info["metrics"].items():
        typer.echo(f"{k}: {_fmt(v)}")
    for line in info["guard_rails"]:
        typer.echo(f"guard rail: {line}")


@app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="First run (name or directory).")],
    b: Annotated[str, typer.Argument(help="Second run.")],
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """What changed between two runs (config, data) and what it did to the results."""
    from tunesmith.report.index import diff_runs, resolve_run

    with friendly_errors():
        d = diff_runs(resolve_run(a, runs_dir), resolve_run(b, runs_dir))
    typer.echo(f"{d.a} -> {d.b}")
    typer.echo("config:" if d.config else "config: identical")
    for k, va, vb in d.config:
        typer.echo(f"  {k}: {_fmt(va)} -> {_fmt(vb)}")
    typer.echo("data:" if d.data else "data: identical fingerprint")
    for k, va, vb in d.data:
        typer.echo(f"  {k}: {_fmt(va)} -> {_fmt(vb)}")
    typer.echo("results:")
    for k, va, vb, delta in d.results:
        typer.echo(f"  {k}: {_fmt(va)} -> {_fmt(vb)}" + ("" if delta is None else f"  ({delta:+.4g})"))
