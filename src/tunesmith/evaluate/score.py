"""`tunesmith eval score FILE --suite NAME`: score outputs produced anywhere (bring your own).

Input: JSONL, one object per line: `prediction` (text, required), `prompt` (text or OpenAI
messages), optional `reference`, `baseline` (a second output, for pairwise judging), `db` (the
row's database), `id`; any other field is kept and handed to the suite (the `code` suite reads
`tests`). The same suites, and the same scoring code, as `eval RUN_DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import EvalConfig
from tunesmith.data.schema import DataError
from tunesmith.evaluate.jsonl import json_objects
from tunesmith.evaluate.runner import build_suites, score_rows
from tunesmith.evaluate.suites import ScoreRow
from tunesmith.runs import write_jsonl

_KNOWN = ("id", "prompt", "prediction", "reference", "baseline", "db")


@dataclass
class ScoreFileResult:
    summary: dict[str, Any]  # the suite's summary keys, plus `suite` and `file`
    rows: list[dict[str, Any]]  # each input row with `scores`: {suite: per-row result}


def read_predictions(path: str | Path) -> list[tuple[dict[str, Any], ScoreRow]]:
    """(raw row, ScoreRow) per line; DataError with file:line for anything unreadable."""
    out = []
    for line_no, row in json_objects(path):
        for key in ("prediction", "reference", "baseline", "db"):
            value = row.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(path, f"`{key}` must be a string, not {type(value).__name__}", row=line_no)
        if "prediction" not in row:
            raise DataError(path, "no `prediction` field (the output to score)", row=line_no)
        prompt = row.get("prompt", "")
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
            raise DataError(path, "`prompt` must be text or a list of OpenAI messages", row=line_no)
        score_row = ScoreRow(
            id=str(row.get("id", line_no)),
            prompt=prompt,
            prediction=row["prediction"] or "",
            reference=row.get("reference"),
            baseline=row.get("baseline"),
            db=row.get("db"),
            extra={k: v for k, v in row.items() if k not in _KNOWN},
        )
        out.append((row, score_row))
    if not out:
        raise DataError(path, "no rows to score")
    return out


def score_file(
    path: str | Path, suite: str, config: EvalConfig | None = None, *, out: str | Path | None = None
) -> ScoreFileResult:
    """Score every row of `path` with `suite` (options from `config`); `out`: write the per-row results."""
    config = (config or EvalConfig()).model_copy(update={"suites": [suite]})
    suites = build_suites(config)
    rows = read_predictions(path)
    per_row, summaries = score_rows([r for _, r in rows], suites)
    results = [{**raw, "scores": scores} for (raw, _), scores in zip(rows, per_row, strict=True)]
    if out is not None:
        write_jsonl(out, results)
    return ScoreFileResult({"suite": suite, "file": str(path), **summaries[suite]}, results)
