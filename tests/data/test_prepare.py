"""One rule in one place: `Encoded.fit` and `prepare`, shared by `data check` and training, so the
check's error rows are exactly the rows training drops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import chat_row, fixture_tokenizer_dir, write_jsonl
from tunesmith.cli.main import app
from tunesmith.config import DataConfig
from tunesmith.data.check import check_file
from tunesmith.data.prepare import (
    DROPPED_ANSWER_CUT,
    DROPPED_DATA_ERROR,
    DROPPED_NOTHING_TRAINED,
    DROPPED_TEMPLATE,
    prepare,
)
from tunesmith.data.schema import Severity
from tunesmith.data.template import IGNORE_INDEX, Cut, Encoded, encode

X = IGNORE_INDEX


def encoded(labels: list[int]) -> Encoded:
    return Encoded(
        input_ids=list(range(100, 100 + len(labels))),
        labels=labels,
        attention_mask=[1] * len(labels),
        n_trained=sum(t != X for t in labels),
    )


def test_fit_cuts_on_the_right_and_reports_what_it_removed():
    example = encoded([X, X, 102, 103, X, X])
    assert example.fit(6) == (example, Cut(0, 0)) and example.fit(60)[1] == Cut(0, 0)
    fitted, cut = example.fit(4)  # only the untrained tail goes
    assert cut == Cut(tokens=2, trained=0)
    assert (fitted.input_ids, fitted.labels, fitted.attention_mask) == ([100, 101, 102, 103], [X, X, 102, 103], [1] * 4)
    assert fitted.n_trained == 2
    fitted, cut = example.fit(3)  # the cut reaches the answer
    assert cut == Cut(tokens=3, trained=1) and fitted.n_trained == 1 and len(fitted.input_ids) == 3
    assert example.input_ids == list(range(100, 106))  # the original is left as it was


@pytest.fixture(scope="module")
def qwen():
    from tunesmith.data.template import load_tokenizer

    return load_tokenizer(fixture_tokenizer_dir("qwen2.5-instruct"))


def test_check_errors_are_exactly_the_rows_training_drops(tmp_path: Path, qwen):
    good = chat_row("How many customers?", "SELECT COUNT(*) FROM customers;")
    longest = chat_row("How many customers signed up in Lyon in 2021, by month?", "SELECT 1;")
    # Trimming only the final untrained token of the longest normal row keeps it (a harmless cut).
    limit = len(encode(longest["messages"], qwen).input_ids) - 1
    weightless = chat_row("Orders?", "SELECT * FROM orders;")
    weightless["messages"][-1]["weight"] = 0
    rows = [
        good,  # 1
        "{broken json",  # 2: data error
        chat_row("List everything.", "SELECT " + ", ".join(f"c{i}" for i in range(200)) + " FROM t;"),  # 3: cut
        weightless,  # 4: nothing to train
        good,  # 5: exact duplicate: a warning, training keeps it
        chat_row("Orders?", "As an AI language model, I cannot run queries."),  # 6: refusal: kept too
        longest,  # 7: too long by one untrained token: trimmed and kept
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    settings = DataConfig(path=str(path), max_seq_len=limit)

    report = check_file(path, config=settings, tokenizer=qwen)
    errors = {f.source.row for f in report.findings if f.severity is Severity.ERROR}
    prepared = prepare(settings, qwen, path)

    assert errors == {2, 3, 4}
    assert prepared.rows == [1, 5, 6, 7] and set(prepared.rows) == set(range(1, 8)) - errors
    assert prepared.rows_read == 7
    assert prepared.dropped == {
        DROPPED_DATA_ERROR: 1,
        DROPPED_TEMPLATE: 0,
        DROPPED_ANSWER_CUT: 1,
        DROPPED_NOTHING_TRAINED: 1,
    }
    codes = {f.source.row: set() for f in report.findings}
    for f in report.findings:
        codes[f.source.row].add(f.code)
    assert {"answer_truncated", "too_long"} <= codes[3] and "nothing_trained" in codes[4] and "too_long" in codes[7]
    trimmed = prepared.examples[3]
    assert len(trimmed.input_ids) == limit and trimmed.n_trained == encode(longest["messages"], qwen).n_trained
    assert all(len(e.input_ids) <= limit for e in prepared.examples)
    assert prepared.notes() == [
        f"{path}: dropped rows: 1 {DROPPED_DATA_ERROR}, 1 {DROPPED_ANSWER_CUT}, 1 {DROPPED_NOTHING_TRAINED}"
    ]


def test_data_check_uses_the_configs_tokenizer_template_and_overrides(tmp_path: Path):
    tokenizer = fixture_tokenizer_dir("qwen2.5-instruct")
    data = write_jsonl(tmp_path / "rows.jsonl", [chat_row("How many?", "SELECT COUNT(*) FROM t;")] * 2)
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: {json.dumps(str(tokenizer))}\ndata:\n  path: elsewhere.jsonl\n")
    runner = CliRunner()

    ok = runner.invoke(app, ["data", "check", str(data), "-c", str(config), "--report", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["path"] == str(data) and report["stats"]["encoded_rows"] == 2  # the config's tokenizer ran

    # The config's chat template replaces the tokenizer's, exactly as in training.
    rejecting = tmp_path / "rejecting.yaml"
    rejecting.write_text(
        config.read_text().replace("model:\n", "model:\n  chat_template: \"{{ raise_exception('no') }}\"\n")
    )
    result = runner.invoke(app, ["data", "check", str(data), "-c", str(rejecting)])
    assert result.exit_code == 1 and "template_error" in result.output

    # Dotted overrides apply to the data commands too.
    result = runner.invoke(app, ["data", "check", str(data), "-c", str(config), "data.max_seq_len=8"])
    assert result.exit_code == 1 and "answer_truncated" in result.output
    result = runner.invoke(app, ["data", "check", str(data), "data.bogus=1"])
    assert result.exit_code == 2 and "data.bogus: unknown key" in result.output
