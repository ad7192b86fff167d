"""`data clean`: split a file into clean rows and rejects, with the reason for every reject.

Every row read ends in exactly one of the two outputs, so `kept + rejected == rows read` always
holds, invalid-JSON lines included. A row is rejected when one of its findings is in `drop`, or
when it cannot be read as a conversation at all. Duplicates keep the first row of each group: a
row dropped only as a duplicate is kept instead when no earlier row of its group was kept (the
first one may have been rejected for another reason, and the content must not vanish).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunesmith.data.check import CheckSettings, check_rows
from tunesmith.data.schema import Finding, Row, Severity
from tunesmith.runs import check_outputs, write_jsonl

_DUPLICATE_CODES = ("exact_duplicate", "near_duplicate")


class CleanSettings(CheckSettings, Protocol):
    """What `data clean` needs of the data config (the run config's `DataConfig` is one)."""

    drop: list[str]  # finding codes whose rows are rejected


@dataclass
class CleanResult:
    rows_read: int
    kept: int
    rejected: int
    reasons: dict[str, int]  # rejected rows per finding code (a row may count under several)
    output: str
    rejects: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        why = ", ".join(f"{code} {n}" for code, n in self.reasons.items()) or "none"
        lines = [
            f"{self.rows_read} rows read: {self.kept} kept -> {self.output}, {self.rejected} rejected -> {self.rejects}",
            f"rejected for: {why}",
        ]
        return "\n".join(lines + self.notes)


def _drop_reasons(row: Row, drop: frozenset[str], kept_groups: set[tuple[str, int]]) -> list[Finding]:
    """The findings that reject this row; updates `kept_groups` when a duplicate group's first kept
    row is this one."""
    if row.conversation is None:  # unreadable rows cannot be written as messages, whatever `drop` says
        # Their reasons are the errors (and dropped codes), not what is merely worth knowing (INFO).
        return [f for f in row.findings if f.severity is Severity.ERROR or f.code in drop]
    reasons = [f for f in row.findings if f.code in drop]
    if reasons and all(f.code in _DUPLICATE_CODES for f in reasons):
        if not any((f.code, f.group) in kept_groups for f in reasons):
            reasons = []  # no earlier row of its group survived: this one stands for the group
    if not reasons:
        kept_groups.update((f.code, f.group) for f in row.findings if f.code in _DUPLICATE_CODES)
        kept_groups.update((code, row.source.row) for code in _DUPLICATE_CODES)  # a group's first row
    return reasons


def _reject(row: Row, reasons: Iterable[Finding]) -> dict[str, Any]:
    why = [{"code": f.code, "message": f.message, **({"field": f.field} if f.field else {})} for f in reasons]
    out = {"line": row.source.row, "reasons": why, "row": row.raw}
    if row.raw_base64 is not None:  # `row` holds U+FFFD where the bytes were not UTF-8; these are the bytes
        out["row_base64"] = row.raw_base64
    return out


def clean_file(
    path: str | Path,
    out: str | Path,
    rejects: str | Path,
    *,
    config: CleanSettings,
    tokenizer: Any = None,
    drop: Iterable[str] | None = None,
    fmt: str = "auto",
    progress: bool = False,
) -> CleanResult:
    """Write the rows of `path` without a finding in `drop` (default: `config.drop`, which is
    `schema.DEFAULT_DROP` unless set) to `out` as messages JSONL, and the others to `rejects` as
    `{"line", "reasons": [{"code", "message", "field"?}], "row": <as read>}`. Both atomically.
    Without a tokenizer the template and truncation checks cannot run, so they cannot reject."""
    check_outputs({"input": path}, {"--output": out, "--rejects": rejects})
    drop_codes = frozenset(drop if drop is not None else config.drop)
    checked = check_rows(path, config=config, tokenizer=tokenizer, fmt=fmt, progress=progress)
    clean, rejected, reasons = [], [], Counter()
    kept_groups: set[tuple[str, int]] = set()
    for row in checked.rows:
        why = _drop_reasons(row, drop_codes, kept_groups)
        if why:
            rejected.append(_reject(row, why))
            reasons.update({f.code for f in why})
        else:
            clean.append(row.conversation.to_json())  # type: ignore[union-attr]
    write_jsonl(out, clean)
    write_jsonl(rejects, rejected)
    return CleanResult(
        len(checked.rows), len(clean), len(rejected), dict(reasons.most_common()), str(out), str(rejects), checked.notes
    )
