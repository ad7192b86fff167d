"""Votes: one JSON file per reviewer in RUN_DIR/compare/votes/, rewritten atomically on every vote.

The review page and an imported spreadsheet write the same file format, so a hand-filled sheet
counts exactly like votes cast on the page. A vote records the sheet it was cast on; votes for
another sheet (rebuilt since) are refused rather than silently mapped onto different outputs.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from tunesmith.compare.sheet import COLUMNS, FORMULA_START, CompareError, read_key, read_sheet
from tunesmith.runs import COMPARE_DIR, VOTES_DIR, write_json

CHOICES = ("A", "B", "tie", "skip")
# Spellings a person types into the Preference cell, folded to one of CHOICES. Blank = not voted.
_SPELLINGS = {
    "a": "A",
    "b": "B",
    "tie": "tie",
    "t": "tie",
    "=": "tie",
    "same": "tie",
    "equal": "tie",
    "both": "tie",
    "skip": "skip",
    "s": "skip",
    "-": "skip",
}
_NAME = re.compile(r"^[\w .'-]{1,40}$")
_LOCK = threading.Lock()  # the review server handles requests on threads; one writer at a time


class VoteError(ValueError):
    """A vote that cannot be recorded (unknown item, bad choice, bad reviewer name)."""


def check_reviewer(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise VoteError("reviewer name: 1-40 letters, digits, spaces, dots, apostrophes, dashes or underscores")
    return name


def _slug(name: str) -> str:
    # File name for a reviewer: lower-case, spaces folded; the name itself is kept inside the file.
    return re.sub(r"[^\w.-]", "_", name.strip().lower()).strip(".") or "_"


def votes_path(run_dir: str | Path, reviewer: str) -> Path:
    return Path(run_dir) / COMPARE_DIR / VOTES_DIR / f"{_slug(check_reviewer(reviewer))}.json"


def load_votes(run_dir: str | Path, reviewer: str) -> dict[str, Any]:
    path = votes_path(run_dir, reviewer)
    if not path.is_file():
        return {"reviewer": check_reviewer(reviewer), "votes": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def all_votes(run_dir: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{reviewer: {item: vote}} for every votes file of the run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    folder = Path(run_dir) / COMPARE_DIR / VOTES_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        out[data.get("reviewer") or path.stem] = data.get("votes", {})
    return out


def cast_vote(
    run_dir: str | Path,
    reviewer: str,
    item: str,
    choice: str,
    note: str = "",
    *,
    items: set[str],
    sheet_id: str,
    source: str = "review page",
) -> dict[str, Any]:
    """Record one vote (replacing the reviewer's earlier vote on the item); the file is rewritten atomically."""
    if item not in items:
        raise VoteError(f"unknown item {item!r}: not on this sheet")
    if choice not in CHOICES:
        raise VoteError(f"choice {choice!r}: expected one of {', '.join(CHOICES)}")
    with _LOCK:
        data = load_votes(run_dir, reviewer)
        data["reviewer"], data["sheet_id"], data["source"] = check_reviewer(reviewer), sheet_id, source
        data["votes"][item] = {"choice": choice, "note": note[:2000], "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(votes_path(run_dir, reviewer), data)
    return data


def import_sheet(run_dir: str | Path, path: str | Path, reviewer: str | None = None) -> tuple[str, int]:
    """Read a hand-filled CSV or XLSX copy of the sheet into the reviewer's votes file.

    The reviewer defaults to the file's name (`alice.xlsx` -> alice). Each row is matched to the
    sheet by its Item, and its Output A must be the sheet's: a copy of an older sheet would
    otherwise count votes against outputs nobody saw. Returns (reviewer, votes imported)."""
    path = Path(path)
    reviewer = check_reviewer(reviewer or path.stem)
    sheet = {r["item"]: r for r in read_sheet(run_dir)}
    sheet_id = read_key(run_dir)["sheet_id"]
    rows = _read_table(path)
    if not rows:
        raise CompareError(f"{path}: empty; expected the sheet's header ({', '.join(COLUMNS)}) and rows")
    header = [str(h or "").strip().lower() for h in rows[0]]
    col = {name: header.index(name.lower()) for name in COLUMNS if name.lower() in header}
    for required in ("Item", "Preference"):
        if required not in col:
            raise CompareError(f"{path}:1: no {required!r} column; the header must be {', '.join(COLUMNS)}")
    imported = 0
    for line, row in enumerate(rows[1:], 2):

        def cell(name: str, row=row) -> str:
            i = col.get(name)
            return "" if i is None or i >= len(row) or row[i] is None else str(row[i])

        item = cell("Item").strip()
        if not item and not any(str(v or "").strip() for v in row):
            continue
        item = item.zfill(3) if item.isdigit() else item  # Excel turns "007" into 7
        if item not in sheet:
            raise CompareError(f"{path}:{line}:Item: {item!r} is not on the current sheet")
        if "Output A" in col and _norm(cell("Output A")) != _norm(sheet[item]["output_a"]):
            raise CompareError(
                f"{path}:{line}:Output A: differs from the current sheet's item {item}; "
                "this file was exported from another sheet (rebuilt since)"
            )
        raw = cell("Preference").strip()
        if not raw:
            continue
        choice = _SPELLINGS.get(raw.lower())
        if choice is None:
            raise CompareError(f"{path}:{line}:Preference: {raw!r}; write A, B, tie or skip (blank: not reviewed)")
        cast_vote(
            run_dir, reviewer, item, choice, cell("Note").strip(), items=set(sheet), sheet_id=sheet_id, source=str(path)
        )
        imported += 1
    return reviewer, imported


def _norm(text: str) -> str:
    # Spreadsheets turn "\n" into "\r\n" and drop trailing whitespace; the long-output cut marker
    # too; the CSV export's apostrophe before a would-be formula comes off.
    if text.startswith("'") and text[1:].startswith(FORMULA_START):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return text.removesuffix("[... cut]").strip()[:32_000]


def _read_table(path: Path) -> list[list[Any]]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CompareError(f"{path}: no such file")
    if suffix == ".csv":
        import csv

        with open(path, encoding="utf-8-sig", newline="") as f:
            return [row for row in csv.reader(f)]
    if suffix in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        try:
            wb = load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # a renamed or damaged file: zipfile / XML errors of many kinds
            raise CompareError(f"{path}: not a readable XLSX file ({e})") from None
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    raise CompareError(f"{path}: expected a .csv or .xlsx copy of the sheet")
