"""The json suite (parsing, schema, field accuracy) and the exact / regex / contains suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import EvalConfig
from tunesmith.evaluate.suites import ScoreRow, get_suite, suite_names
from tunesmith.evaluate.suites.json import flatten, parse_json

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
}
REFERENCE = '{"name": "Ada", "age": 36, "tags": ["math", "code"]}'


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def test_every_suite_registers():
    assert {"sql", "json", "code", "exact", "regex", "contains"} <= set(suite_names())


def test_parse_json_tolerates_fences_and_reports_prose():
    assert parse_json('{"a": 1}') == ({"a": 1}, True, None)
    assert parse_json('```json\n{"a": 1}\n```') == ({"a": 1}, True, "fenced")
    assert parse_json('Here it is: {"a": 1} Hope that helps!') == ({"a": 1}, True, "trailing_prose")
    assert parse_json('```json\n{"a": 1}\n```\nLet me know.')[2] == "trailing_prose"
    assert parse_json("{'a': 1}")[1] is False  # Python, not JSON
    assert parse_json("no json here")[1] is False
    assert flatten({"a": {"b": [1, {"c": 2}]}, "d": []}) == {"a.b[0]": 1, "a.b[1].c": 2, "d": []}


def test_json_suite_scores(schema_file: Path):
    suite = get_suite("json", EvalConfig(json_schema=str(schema_file)))
    rows = [
        ScoreRow("1", "p", '{"name": "Ada", "age": 36.0, "tags": ["math", "code"]}', REFERENCE),
        ScoreRow("2", "p", 'Sure! {"name": "Ada", "age": -1, "tags": ["math"]} That is all.', REFERENCE),
        ScoreRow("3", "p", '{"name": "Ada", "age": 36', REFERENCE),
    ]
    scores = suite.score(rows)
    assert scores[0]["parsed"] and scores[0]["schema_valid"] and scores[0]["field_accuracy"] == 1.0
    assert scores[1]["note"] == "trailing_prose" and not scores[1]["schema_valid"]
    assert "minimum" in scores[1]["schema_errors"][0]
    assert scores[1]["field_accuracy"] == pytest.approx(2 / 4)  # name and tags[0] right; age, tags[1] not
    assert not scores[2]["parsed"] and scores[2]["field_accuracy"] == 0.0
    summary = suite.summarize(scores)
    assert summary == {
        "n": 3,
        "parse_rate": pytest.approx(2 / 3),
        "schema_valid_rate": pytest.approx(1 / 3),
        "field_accuracy": pytest.approx(0.5),
        "trailing_prose": 1,
    }


def test_json_without_schema_reports_none():
    suite = get_suite("json")
    assert suite.summarize(suite.score([ScoreRow("1", "p", "[1, 2]", None)]))["schema_valid_rate"] is None


def test_bad_schema_file_is_an_error(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json:1"):
        get_suite("json", EvalConfig(json_schema=str(bad)))


def test_exact_regex_contains():
    rows = [
        ScoreRow("1", "p", "  Positive. ", "positive"),
        ScoreRow("2", "p", "The answer is negative, clearly.", "negative"),
        ScoreRow("3", "p", "neutral", None),
    ]
    exact = get_suite("exact")
    assert [s["correct"] for s in exact.score(rows)] == [True, False, False]
    assert exact.summarize(exact.score(rows)) == {"n": 3, "accuracy": pytest.approx(1 / 3), "no_reference": 1}
    contains = get_suite("contains")
    assert [s["correct"] for s in contains.score(rows)] == [True, True, False]
    regex = get_suite("regex")
    regex_rows = [ScoreRow("1", "p", "Order #123 shipped", r"#\d+"), ScoreRow("2", "p", "x", "(")]
    scored = regex.score(regex_rows)
    assert scored[0]["correct"] and not scored[1]["correct"] and "invalid pattern" in scored[1]["error"]
