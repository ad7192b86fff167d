"""The command line: exit codes, no tracebacks for bad input, and the commands call the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import fixture_tokenizer_dir, read_jsonl, write_jsonl
from tunesmith.cli.main import app

runner = CliRunner()

GOOD = {
    "messages": [
        {"role": "user", "content": "How many orders?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"},
    ]
}


@pytest.mark.parametrize("content", [None, b"", b"\x00\x01\x02binary\x00", b"\n\n  \n"])
def test_unreadable_input_exits_2_without_traceback(tmp_path: Path, content: bytes | None):
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_bytes(content)
    for args in (["data", "check", str(path)], ["data", "convert", str(path), "-o", str(tmp_path / "o.jsonl")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and str(path) in result.output


def test_convert_alpaca_to_messages(tmp_path: Path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": "Add", "input": "1+1", "output": "2"}]))
    result = runner.invoke(app, ["data", "convert", str(src), "-o", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert row["messages"][-1] == {"role": "assistant", "content": "2"}


def test_show_json_marks_exactly_the_answer(tmp_path: Path):
    tok = fixture_tokenizer_dir("qwen2.5-instruct")
    src = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    result = runner.invoke(app, ["data", "show", str(src), "--tokenizer", str(tok), "--json"])
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.output)["tokens"]
    assert "".join(t["text"] for t in tokens if t["trained"]) == "SELECT COUNT(*) FROM orders;<|im_end|>"


def test_show_unreadable_row_names_its_line(tmp_path: Path):
    tok = fixture_tokenizer_dir("qwen2.5-instruct")
    src = write_jsonl(tmp_path / "d.jsonl", [GOOD, "{not json"])
    result = runner.invoke(app, ["data", "show", str(src), "--tokenizer", str(tok), "--index", "1"])
    assert result.exit_code == 2 and "d.jsonl:2" in result.output and "invalid_json" in result.output


def test_bad_config_exits_2(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian:\n  lr: 1\n")
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2 and "trian: unknown key" in result.output


def test_clean_with_an_unknown_drop_code_exits_2(tmp_path: Path):
    src = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    result = runner.invoke(
        app,
        [
            "data",
            "clean",
            str(src),
            "-o",
            str(tmp_path / "c.jsonl"),
            "--rejects",
            str(tmp_path / "r.jsonl"),
            "--drop",
            "refusal,typo",
        ],
    )
    assert (
        result.exit_code == 2 and "unknown finding codes ['typo']" in result.output and "Traceback" not in result.output
    )


def test_clean_accounts_for_every_row(tmp_path: Path):
    src = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, "{broken"])
    result = runner.invoke(
        app, ["data", "clean", str(src), "-o", str(tmp_path / "c.jsonl"), "--rejects", str(tmp_path / "r.jsonl")]
    )
    assert result.exit_code == 0, result.output
    rejects = read_jsonl(tmp_path / "r.jsonl")
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1
    assert sorted((r["line"], r["reasons"][0]["code"]) for r in rejects) == [
        (2, "exact_duplicate"),
        (3, "invalid_json"),
    ]


def test_train_without_model_and_data_says_which_keys_are_missing(tmp_path: Path):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2, result.output
    assert "model.name_or_path: required" in result.output and "data.path: required" in result.output
    assert "Traceback" not in result.output
