"""`tunesmith eval score FILE`: bring your own outputs; the same suites as `eval RUN_DIR`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.data.schema import DataError
from tunesmith.evaluate.score import score_file

runner = CliRunner()


@pytest.fixture
def spider(tmp_path: Path) -> Path:
    """Two databases in Spider's layout, with different contents for the same table."""
    for name, rows in (("shop", [(1,), (2,)]), ("zoo", [(7,)])):
        (tmp_path / "db" / name).mkdir(parents=True)
        with sqlite3.connect(tmp_path / "db" / name / f"{name}.sqlite") as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
            conn.executemany("INSERT INTO t VALUES (?)", rows)
        conn.close()
    return tmp_path / "db"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_per_row_databases_json_summary_and_out(tmp_path: Path, spider: Path):
    preds = _write(
        tmp_path / "preds.jsonl",
        [
            {
                "id": "a",
                "prompt": "How many?",
                "prediction": "SELECT count(*) FROM t",
                "reference": "SELECT COUNT(x) FROM t",
                "db": "shop",
                "difficulty": "easy",
            },
            {
                "id": "b",
                "prompt": [{"role": "user", "content": "Biggest?"}],
                "prediction": "SELECT max(x) FROM t",
                "reference": "SELECT x FROM t",
                "db": "zoo",
            },
            {"id": "c", "prompt": "Wipe it", "prediction": "DROP TABLE t", "reference": "SELECT x FROM t", "db": "zoo"},
        ],
    )
    before = hashlib.sha256((spider / "zoo" / "zoo.sqlite").read_bytes()).hexdigest()
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(
        app, ["eval", "score", str(preds), "--suite", "sql", "--db-dir", str(spider), "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["suite"] == "sql" and summary["n"] == 3
    assert summary["execution_success_rate"] == pytest.approx(2 / 3)
    assert summary["execution_accuracy"] == pytest.approx(2 / 3)  # zoo has one row: max(x) == x there
    assert summary["errors"] == {"write_denied": 1} and summary["mode"] == "strict"
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == ["a", "b", "c"]
    assert scored[0]["difficulty"] == "easy"  # other fields kept
    assert scored[2]["scores"]["sql"]["error_kind"] == "write_denied"
    assert hashlib.sha256((spider / "zoo" / "zoo.sqlite").read_bytes()).hexdigest() == before


def test_library_call_matches_the_cli(tmp_path: Path):
    preds = _write(tmp_path / "p.jsonl", [{"prediction": "Positive.", "reference": "positive"}, {"prediction": "no"}])
    result = score_file(preds, "exact")
    assert result.summary == {"suite": "exact", "file": str(preds), "n": 2, "accuracy": 0.5, "no_reference": 1}
    assert result.rows[0]["scores"]["exact"]["correct"] is True


def test_code_rows_bring_their_tests(tmp_path: Path):
    preds = _write(
        tmp_path / "code.jsonl",
        [
            {
                "prompt": "square",
                "prediction": "```python\ndef sq(x):\n    return x * x\n```",
                "tests": "assert sq(3) == 9",
            }
        ],
    )
    assert score_file(preds, "code").summary["pass_rate"] == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prediction": "x"}\n{broken\n', "p.jsonl:2: not valid JSON"),
        ('{"prompt": "q"}\n', "p.jsonl:1: no `prediction`"),
        ('["a list"]\n', "p.jsonl:1: expected a JSON object"),
        ('{"prediction": 3}\n', "p.jsonl:1: `prediction` must be a string"),
        ('{"prediction": "x", "prompt": 5}\n', "p.jsonl:1: `prompt` must be text"),
        ("\n", "no rows to score"),
    ],
)
def test_unreadable_input_exits_2_with_file_and_line(tmp_path: Path, content: str, message: str):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("`", ".").replace("(", r"\(")):
        score_file(path, "exact")
    result = runner.invoke(app, ["eval", "score", str(path), "--suite", "exact"])
    assert result.exit_code == 2 and message in result.output


def test_missing_file_unknown_suite_and_bad_schema_exit_2(tmp_path: Path):
    assert runner.invoke(app, ["eval", "score", str(tmp_path / "none.jsonl"), "--suite", "exact"]).exit_code == 2
    preds = _write(tmp_path / "p.jsonl", [{"prediction": "{}"}])
    unknown = runner.invoke(app, ["eval", "score", str(preds), "--suite", "bleu"])
    assert unknown.exit_code == 2 and "unknown evaluation suite 'bleu'" in unknown.output
    bad = runner.invoke(app, ["eval", "score", str(preds), "--suite", "json", "--schema", str(tmp_path / "no.json")])
    assert bad.exit_code == 2 and "no.json" in bad.output
