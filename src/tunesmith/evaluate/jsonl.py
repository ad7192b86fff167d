"""Reading the JSONL files evaluation takes (held-out splits, predictions, regression prompts).

Evaluation inputs are strict, unlike `data check`, which reports every bad row and goes on: one row
that cannot be read stops the run with its file and line, because a score over silently fewer rows
would mislead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.data.schema import DataError


def json_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; DataError naming file:line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"not valid JSON ({e.msg})", row=line_no) from None
            if not isinstance(row, dict):
                raise DataError(path, "expected a JSON object per line", row=line_no)
            yield line_no, row
