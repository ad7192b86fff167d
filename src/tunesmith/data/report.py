"""The `data check` report: one screen in the console (Rich), and the same facts as JSON."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.data.check import FILE_ROW, CheckReport
from tunesmith.data.schema import CODES, Finding, Severity
from tunesmith.runs import write_json

_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}
_MESSAGE_CHARS = 120  # an example's message is clipped to this, so a row fits on a line or two


def verdict(report: CheckReport) -> str:
    """One line: does anything block training, and what to do."""
    by_severity: dict[Severity, int] = defaultdict(int)
    for code, n in report.counts.items():
        by_severity[CODES[code].severity] += n
    errors, warnings = by_severity[Severity.ERROR], by_severity[Severity.WARNING]
    if report.blocking:
        codes = ", ".join(c for c in report.counts if CODES[c].severity is Severity.ERROR)
        return (
            f"BLOCKED: {errors} error finding(s) ({codes}); fix them, or run `tunesmith data clean` to drop those rows"
        )
    if warnings:
        return f"OK to train: nothing blocks, but {warnings} warning(s) would teach the wrong thing; `tunesmith data clean` drops most"
    return "OK to train: nothing blocks and nothing warns"


def _where(report: CheckReport, f: Finding) -> str:
    name = Path(report.path).name
    where = f"{name} (whole file)" if f.source.row == FILE_ROW else f"{name}:{f.source.row}"
    return f"{where} {f.field}" if f.field else where


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _length_lines(report: CheckReport) -> list[str]:
    s = report.stats
    if "tokens" not in s:
        return []
    t = s["tokens"]
    return [
        f"tokens per example: min {t['min']}, median {t['median']:g}, p95 {t['p95']:.0f}, max {t['max']}  "
        f"({s['encoded_rows']} encoded rows, {s['rows_over_max_seq_len']} over max_seq_len={s['max_seq_len']})",
        f"trained tokens: {s['trained_tokens']} ({s['trained_tokens_after_cut']} survive the max_seq_len cut)",
    ]


def print_report(report: CheckReport, console: Console | None = None, *, examples: int = 3) -> None:
    """Counts per finding code with severity, a few example rows each (file:line and field),
    length statistics, where the histogram is, and the verdict."""
    console = console or Console()
    s = report.stats
    console.print(
        f"[bold]{escape(report.path)}[/]: {report.rows} rows ({report.format}), "
        f"{s.get('unreadable_rows', 0)} unreadable, {s.get('rows_with_findings', 0)} with findings"
    )
    codes = sorted(report.counts, key=lambda c: (_ORDER[CODES[c].severity], -report.counts[c], c))
    if codes:
        table = Table(show_edge=False, pad_edge=False)
        for column, justify in (("finding", "left"), ("severity", "left"), ("count", "right"), ("meaning", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for code in codes:
            severity = CODES[code].severity
            style = _STYLE[severity]
            table.add_row(
                f"[{style}]{code}[/]",
                f"[{style}]{severity.value}[/]",
                str(report.counts[code]),
                escape(CODES[code].summary),
            )
        console.print(table)
        by_code: dict[str, list[Finding]] = defaultdict(list)
        for f in report.findings:
            if len(by_code[f.code]) < examples:
                by_code[f.code].append(f)
        for code in codes:
            if CODES[code].severity is Severity.INFO and report.counts[code] > 1:
                continue  # an info finding on many rows is a fact about the file, not a row to look at
            console.print(f"[{_STYLE[CODES[code].severity]}]{code}[/]:")
            for f in by_code[code]:
                console.print(f"  {escape(_where(report, f))}: {escape(_clip(f.message))}", highlight=False)
    for line in _length_lines(report):
        console.print(line)
    if report.plot:
        console.print(f"token-length histogram: {escape(report.plot)}")
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    style = "bold red" if report.blocking else "bold green"
    console.print(f"[{style}]{escape(verdict(report))}[/]")


def write_report_json(report: CheckReport, path: str | Path) -> None:
    """The report as JSON (atomically): counts, stats, groups, and every finding with its line."""
    write_json(path, {**report.to_json(), "verdict": verdict(report)})
