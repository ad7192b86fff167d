"""The compare / unblind commands end to end: exit codes and what they print."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from tests.compare.fixtures import make_run
from tunesmith.cli.main import app
from tunesmith.compare.sheet import read_key
from tunesmith.runs import COMPARE_DIR, SHEET_CSV_FILE

runner = CliRunner()


def test_compare_then_unblind_an_imported_sheet(tmp_path):
    run = make_run(tmp_path / "run", n=10)
    r = runner.invoke(app, ["compare", str(run), "-n", "6", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert "6 prompts (10 available), tuned vs base" in r.output
    key = read_key(run)
    with open(run / COMPARE_DIR / SHEET_CSV_FILE, encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    for row in table[1:]:
        row[4] = "A" if key["items"][row[0]]["A"] == "tuned" else "B"  # the tuned side every time
    filled = tmp_path / "erin.csv"
    with open(filled, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(table)
    r = runner.invoke(app, ["unblind", str(run), "--import", str(filled)])
    assert r.exit_code == 0, r.output
    assert "imported 6 votes of erin" in r.output
    assert "tuned wins 6, loses 0, ties 0" in r.output and "win rate 100% [95% CI 61%-100%]" in r.output


def test_compare_without_eval_outputs_exits_2(tmp_path):
    r = runner.invoke(app, ["compare", str(tmp_path)])
    assert r.exit_code == 2 and "tunesmith eval" in r.output


def test_review_without_a_sheet_exits_2_before_serving(tmp_path):
    make_run(tmp_path / "run", n=3)
    r = runner.invoke(app, ["review", str(tmp_path / "run")])
    assert r.exit_code == 2 and "tunesmith compare" in r.output


def test_unblind_exits_1_when_people_prefer_the_other_model(tmp_path):
    from tunesmith.compare import cast_vote

    run = make_run(tmp_path / "run", n=6)
    assert runner.invoke(app, ["compare", str(run)]).exit_code == 0
    key = read_key(run)
    for item, k in key["items"].items():  # the other side, every time: 0 of 6, CI 0%-39%
        cast_vote(
            run, "gus", item, "B" if k["A"] == "tuned" else "A", items=set(key["items"]), sheet_id=key["sheet_id"]
        )
    r = runner.invoke(app, ["unblind", str(run)])
    assert r.exit_code == 1 and "base is preferred" in r.output
