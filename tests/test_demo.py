"""The demo's own pieces: the held-out sample, the before/after table's ✓/✗, and the --tiny path's
data stages (the real-model path trains for minutes: `make demo` runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tunesmith import demo
from tunesmith.examples.text2sql import write_database


def test_hold_out_is_seeded_and_never_trains_on_a_test_row(tmp_path: Path) -> None:
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"id": i, "messages": []}) + "\n" for i in range(100)))
    train, test = demo.hold_out(clean, n_train=50, n_test=10, seed=0)
    assert len(train) == 50 and len(test) == 10
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert demo.hold_out(clean, n_train=50, n_test=10, seed=0) == (train, test)
    assert demo.hold_out(clean, n_train=50, n_test=10, seed=1)[1] != test
    assert len(demo.hold_out(clean, n_train=500, n_test=10, seed=0)[0]) == 90  # fewer rows: all of the rest


def test_mark_compares_result_rows_and_writes_nothing(tmp_path: Path) -> None:
    db = write_database(tmp_path / "shop.sqlite")
    before = db.read_bytes()
    ref = "SELECT COUNT(*) FROM customers;"
    assert demo._mark(db, "SELECT COUNT(id) FROM customers", ref) == "✓"  # other SQL, same rows
    assert demo._mark(db, "SELECT COUNT(*) FROM orders;", ref) == "✗"
    assert demo._mark(db, "The answer is 42.", ref) == "✗"
    assert demo._mark(db, "DELETE FROM customers;", ref) == "✗"  # read-only connection: refused
    assert db.read_bytes() == before


@pytest.mark.slow
def test_tiny_demo_checks_and_cleans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~10 s: builds the tiny model, checks and cleans the 3,000 rows, no training."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "text2sql").symlink_to(repo / "examples" / "text2sql", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    result = demo.run_demo(train=False, tiny=True, console=Console(quiet=True))
    clean = result.config.run_dir / "data" / "clean.jsonl"
    assert clean.is_file() and 2500 < len(clean.read_text().splitlines()) < 3000
    assert {"data check", "data clean"} <= set(result.seconds)
