"""`data check`: everything wrong with a file of examples, and where.

One pass, in this order: read and validate every row (format findings), the quality gates,
exact and near duplicates, then, given a tokenizer, the chat template: each row is rendered,
tokenized, masked and fitted to `max_seq_len` by the rule training applies (`prepare.fit_rows`):
every row with an ERROR finding is a row training drops. This finds `too_long` rows and the worst
trap of all, `answer_truncated`: the right-side cut at `max_seq_len` removes part or all of an
answer, so the model learns to ask and never to answer. Findings about the tokenizer itself are
reported once, on row 0 (the whole file).

Exit codes for the CLI: 0 nothing blocks, 1 an ERROR finding blocks training, 2 the file cannot
be read at all (`DataError`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tunesmith.data.dedup import find_duplicates
from tunesmith.data.prepare import DataSettings, fit_rows
from tunesmith.data.quality import quality_findings
from tunesmith.data.schema import CODES, Finding, Row, Severity, Source
from tunesmith.data.validate import read_rows
from tunesmith.runs import LENGTHS_PLOT_FILE, write_png


class CheckSettings(DataSettings, Protocol):
    """What `data check` needs of the data config (the run config's `DataConfig` is one)."""

    near_dup_threshold: float
    refusal_phrases: list[str]


FILE_ROW = 0  # the row number of findings about the whole file (the tokenizer, its template)
_NO_TOKENIZER = "no tokenizer given: template, length and truncation checks skipped (pass --tokenizer)"


@dataclass
class Lengths:
    """Token counts of the rows the template could encode, in row order."""

    rows: list[int]  # row numbers
    tokens: np.ndarray  # tokens per row, before the max_seq_len cut
    trained: np.ndarray  # trained (label != -100) tokens per row, before the cut
    trained_kept: np.ndarray  # trained tokens that survive the cut


@dataclass
class Checked:
    """Every row of a file with all its findings attached: what `data check` reports and `data
    clean` splits."""

    path: str
    format: str
    rows: list[Row]
    file_findings: list[Finding]  # about the whole file (row 0)
    groups: dict[str, list[list[int]]]  # "exact_duplicate"/"near_duplicate" -> groups of row numbers
    lengths: Lengths | None  # None without a tokenizer
    notes: list[str] = field(default_factory=list)


def check_rows(
    path: str | Path, *, config: CheckSettings, tokenizer: Any = None, fmt: str = "auto", progress: bool = False
) -> Checked:
    """Read a file and attach every finding to its row. Raises DataError if it cannot be read.
    `progress` shows a progress bar (on stderr) over templating and tokenizing, the slow part."""
    fmt, rows = read_rows(path, fmt)
    readable = [r for r in rows if r.conversation is not None]
    for row in readable:
        row.findings += quality_findings(row.conversation, refusal_phrases=config.refusal_phrases)  # type: ignore[arg-type]
    dups = find_duplicates([r.conversation for r in readable], config.near_dup_threshold)  # type: ignore[misc]
    for row, found in zip(readable, dups.findings):
        row.findings += found
    groups = {
        "exact_duplicate": [[readable[i].source.row for i in g] for g in dups.exact],
        "near_duplicate": [[readable[i].source.row for i in g] for g in dups.near],
    }
    from tunesmith.data.convert import conversion_notes

    checked = Checked(str(path), fmt, rows, [], groups, None, conversion_notes(rows))
    if tokenizer is None:
        checked.notes.append(_NO_TOKENIZER)
    else:
        checked.file_findings = _tokenizer_findings(tokenizer, str(path))
        checked.lengths = _token_checks(readable, tokenizer, config, progress)
    return checked


def _tokenizer_findings(tokenizer: Any, path: str) -> list[Finding]:
    from tunesmith.data.template import inspect_tokenizer

    return [Finding(code, Source(path, FILE_ROW), message) for code, message in inspect_tokenizer(tokenizer)]


def _token_checks(rows: list[Row], tokenizer: Any, config: CheckSettings, progress: bool = False) -> Lengths:
    """Template errors, `too_long`, `answer_truncated` and `nothing_trained` per row, by the rule
    training applies (`prepare.fit_rows`); token counts of the rows the template encodes."""
    numbers, tokens, trained, kept = [], [], [], []
    for fitted in fit_rows(
        rows,
        tokenizer,
        max_seq_len=config.max_seq_len,
        train_on=config.train_on,
        progress=progress,  # type: ignore[arg-type]
    ):
        numbers.append(fitted.row.source.row)
        tokens.append(len(fitted.encoded.input_ids))
        trained.append(fitted.encoded.n_trained)
        kept.append(fitted.encoded.n_trained - fitted.cut.trained)
    return Lengths(numbers, *(np.asarray(x, dtype=np.int64) for x in (tokens, trained, kept)))


@dataclass
class CheckReport:
    """What `data check` found. `findings` are in row order (row 0, the whole file, first)."""

    path: str
    format: str
    rows: int
    findings: list[Finding]
    counts: dict[str, int]  # per finding code, most frequent first
    blocking: bool  # any ERROR finding: training would fail or learn the wrong thing
    stats: dict[str, Any]  # rows by outcome; with a tokenizer, token lengths too
    groups: dict[str, list[list[int]]]  # duplicate groups as row numbers
    notes: list[str] = field(default_factory=list)
    plot: str | None = None  # the token-length histogram, when written

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "blocking": self.blocking,
            "counts": self.counts,
            "severities": {code: CODES[code].severity.value for code in self.counts},
            "stats": self.stats,
            "groups": self.groups,
            "notes": self.notes,
            "plot": self.plot,
            "findings": [f.to_json() for f in self.findings],
        }


def length_stats(lengths: Lengths, max_seq_len: int) -> dict[str, Any]:
    """Token statistics: min/median/p95/max tokens per row and trained tokens before and after the cut."""
    t = lengths.tokens
    if not len(t):
        return {"encoded_rows": 0, "max_seq_len": max_seq_len}
    return {
        "encoded_rows": len(t),
        "max_seq_len": max_seq_len,
        "tokens": {
            "min": int(t.min()),
            "median": float(np.median(t)),
            "p95": float(np.percentile(t, 95)),
            "max": int(t.max()),
            "total": int(t.sum()),
        },
        "rows_over_max_seq_len": int((t > max_seq_len).sum()),
        "trained_tokens": int(lengths.trained.sum()),
        "trained_tokens_after_cut": int(lengths.trained_kept.sum()),
    }


def plot_lengths(lengths: Lengths, max_seq_len: int, path: str | Path, title: str = "") -> Path:
    """A histogram of tokens per row with max_seq_len marked, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    try:
        t = lengths.tokens
        # Log-spaced bins when a few huge rows would squash every other row into one bar.
        log = len(t) > 0 and t.max() > 20 * max(1.0, float(np.median(t)))
        bins = np.geomspace(max(1, t.min()), t.max() + 1, 50) if log else 50
        ax.hist(t, bins=bins, color="#4C72B0")
        if log:
            ax.set_xscale("log")
        if len(t) and (t > max_seq_len).any():
            ax.set_yscale("symlog", linthresh=1)  # a handful of over-long rows stays visible beside thousands
        ax.axvline(max_seq_len, color="#C44E52", linestyle="--", label=f"max_seq_len = {max_seq_len}")
        over = int((t > max_seq_len).sum())
        ax.set_xlabel("tokens per example (after the chat template)")
        ax.set_ylabel("examples")
        ax.set_title(f"{title}  ({len(t)} examples, {over} over max_seq_len)".strip())
        ax.legend()
        write_png(path, fig)
    finally:
        plt.close(fig)
    return Path(path)


def build_report(checked: Checked, config: CheckSettings, plot_dir: str | Path | None = None) -> CheckReport:
    """Summarise checked rows: findings in row order, counts, the verdict, stats and the plot."""
    findings = checked.file_findings + [f for row in checked.rows for f in row.findings]
    counts = dict(Counter(f.code for f in findings).most_common())
    blocking = any(f.severity is Severity.ERROR for f in findings)
    unreadable = sum(r.conversation is None for r in checked.rows)
    stats: dict[str, Any] = {
        "rows": len(checked.rows),
        "readable_rows": len(checked.rows) - unreadable,
        "unreadable_rows": unreadable,
    }
    stats["rows_with_findings"] = sum(bool(r.findings) for r in checked.rows)
    plot = None
    if checked.lengths is not None:
        stats.update(length_stats(checked.lengths, config.max_seq_len))
        if plot_dir is not None and len(checked.lengths.tokens):
            plot = str(
                plot_lengths(
                    checked.lengths, config.max_seq_len, Path(plot_dir) / LENGTHS_PLOT_FILE, Path(checked.path).name
                )
            )
    return CheckReport(
        checked.path,
        checked.format,
        len(checked.rows),
        findings,
        counts,
        blocking,
        stats,
        checked.groups,
        checked.notes,
        plot,
    )


def check_file(
    path: str | Path,
    *,
    config: CheckSettings,
    tokenizer: Any = None,
    fmt: str = "auto",
    plot_dir: str | Path | None = None,
    progress: bool = False,
) -> CheckReport:
    """Check a file of examples (see the module docstring). Writes the token-length histogram
    into `plot_dir` when given (and a tokenizer is). Raises DataError if the file is unreadable."""
    checked = check_rows(path, config=config, tokenizer=tokenizer, fmt=fmt, progress=progress)
    return build_report(checked, config, plot_dir)
