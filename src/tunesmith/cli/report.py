"""`tunesmith report RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import friendly_errors


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (whatever stages it has run).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """Write one self-contained report.html: headline, guard rails, data, split, plan, training, eval, review."""
    from tunesmith.report import write_report
    from tunesmith.report.collect import collect, guard_rails
    from tunesmith.report.index import is_run

    with friendly_errors():
        if not is_run(run_dir):
            from tunesmith.compare.sheet import CompareError

            raise CompareError(f"{run_dir}: not a run directory (no config.yaml, manifest.json or eval/summary.json)")
        path = write_report(run_dir, out)
    for line in guard_rails(collect(run_dir)):
        typer.echo(f"guard rail: {line}")
    typer.echo(f"report: {path}")
