"""`data convert`: a whole file in any supported format to OpenAI messages JSONL.

Its own module because it chains `formats` (reading, converting a record) with `validate`
(checking the result), and `validate` imports `formats`: kept here, neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.schema import Row, Severity
from tunesmith.data.validate import read_rows
from tunesmith.runs import check_outputs, write_jsonl


@dataclass
class ConvertResult:
    format: str  # the source format used (detected when asked for auto)
    output_path: str
    rows_read: int
    rows_written: int
    skipped: list[Row] = field(default_factory=list)  # rows not written, each with its findings
    notes: list[str] = field(default_factory=list)  # e.g. values changed to fit JSON

    @property
    def failed(self) -> int:
        return len(self.skipped)

    def reasons(self) -> dict[str, int]:
        """How many skipped rows carry each error code."""
        counts: dict[str, int] = {}
        for row in self.skipped:
            for code in sorted({f.code for f in row.findings if f.severity is Severity.ERROR}):
                counts[code] = counts.get(code, 0) + 1
        return counts

    def summary(self, show: int = 10) -> str:
        """A few lines for people: what was written, and where the first skipped rows are."""
        lines = [
            f"{self.format} → messages: {self.rows_written} of {self.rows_read} rows written to {self.output_path}"
        ]
        if self.skipped:
            counts = ", ".join(f"{code} {n}" for code, n in sorted(self.reasons().items()))
            lines.append(f"{self.failed} row{'s' if self.failed > 1 else ''} skipped ({counts}):")
            for row in self.skipped[:show]:
                first = next(f for f in row.findings if f.severity is Severity.ERROR)
                where = f"{row.source}:{first.field}" if first.field else str(row.source)
                lines.append(f"  {where}: {first.code}: {first.message}")
            if self.failed > show:
                lines.append(f"  ... and {self.failed - show} more")
        return "\n".join(lines + self.notes)


def conversion_notes(rows: list[Row]) -> list[str]:
    """One line per column whose values were changed to fit JSON (`json_safe_value` findings)."""
    seen: dict[str, int] = {}
    for row in rows:
        for f in row.findings:
            if f.code == "json_safe_value":
                seen[f.message] = seen.get(f.message, 0) + 1
    return [
        f"{message} in {n} row{'s' if n > 1 else ''} (JSON cannot hold it as it was)" for message, n in seen.items()
    ]


def convert_file(input_path: str | Path, output_path: str | Path, fmt: str = "auto") -> ConvertResult:
    """Convert a data file to messages JSONL, written atomically. Rows with an ERROR finding, from
    the conversion or from the messages checks, are left out and returned with their reasons:
    the output is a file `data check` finds no format errors in."""
    check_outputs({"input": input_path}, {"--output": output_path})
    fmt, rows = read_rows(input_path, fmt)
    written = write_jsonl(output_path, (row.conversation.to_json() for row in rows if row.conversation is not None))
    skipped = [row for row in rows if row.conversation is None]
    return ConvertResult(fmt, str(output_path), len(rows), written, skipped, conversion_notes(rows))
