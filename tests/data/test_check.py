"""`data check` on real files with real tokenizers, and on small files built to hold each flaw."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import chat_row, fixture_tokenizer_dir, write_jsonl
from tunesmith.config import DataConfig
from tunesmith.data.check import FILE_ROW, check_file
from tunesmith.data.report import print_report, verdict, write_report_json
from tunesmith.data.schema import DataError
from tunesmith.runs import LENGTHS_PLOT_FILE

SYSTEM = {"role": "system", "content": "You write SQL."}


@pytest.fixture(scope="module")
def qwen():
    from tunesmith.data.template import load_tokenizer

    return load_tokenizer(fixture_tokenizer_dir("qwen2.5-instruct"))


def by_row(report) -> dict[int, set[str]]:
    rows: dict[int, set[str]] = {}
    for f in report.findings:
        rows.setdefault(f.source.row, set()).add(f.code)
    return rows


def chat(q: str, a: str, system: bool = True) -> dict:
    return chat_row(q, a, system=SYSTEM["content"] if system else None)


def test_openai_cookbook_flawed_file(shared_fixtures: Path, qwen, tmp_path: Path) -> None:
    path = shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl"
    report = check_file(path, config=DataConfig(max_seq_len=2048), tokenizer=qwen, plot_dir=tmp_path)
    assert by_row(report) == {3: {"no_system_message"}, 4: {"no_user_message"}, 5: {"too_long", "answer_truncated"}}
    assert report.blocking and report.exit_code == 1  # answer_truncated is an error
    cut = next(f for f in report.findings if f.code == "answer_truncated")
    assert cut.field == "messages[2].content" and "2048" in cut.message
    stats = report.stats
    assert stats["rows_over_max_seq_len"] == 1 and stats["tokens"]["max"] > 2048 >= stats["tokens"]["median"]
    assert stats["trained_tokens_after_cut"] < stats["trained_tokens"]
    assert report.plot == str(tmp_path / LENGTHS_PLOT_FILE)
    assert (tmp_path / LENGTHS_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_longer_limit_unblocks_the_cookbook_file(shared_fixtures: Path, qwen) -> None:
    report = check_file(
        shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl", config=DataConfig(max_seq_len=16384), tokenizer=qwen
    )
    assert not report.blocking
    assert "too_long" not in report.counts and "answer_truncated" not in report.counts


def test_without_a_tokenizer_token_checks_are_skipped_and_said(shared_fixtures: Path, tmp_path: Path) -> None:
    report = check_file(
        shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl",
        config=DataConfig(max_seq_len=2048),
        plot_dir=tmp_path,
    )
    assert by_row(report) == {3: {"no_system_message"}, 4: {"no_user_message"}}
    assert not report.blocking and "tokens" not in report.stats and report.plot is None
    assert any("tokenizer" in note for note in report.notes)
    assert not (tmp_path / LENGTHS_PLOT_FILE).exists()


def test_fastchat_dummy_near_duplication_is_found(shared_fixtures: Path) -> None:
    path = shared_fixtures / "data" / "sharegpt_fastchat_dummy.json"
    report = check_file(path, config=DataConfig())
    assert report.format == "sharegpt" and report.rows == 500 and "exact_duplicate" not in report.counts
    # Ground truth: the exact word 3-gram Jaccard of every pair of rows (user + assistant text).
    grams = {}
    for row, record in enumerate(json.loads(path.read_text()), 1):
        words = re.findall(r"\w+", "\n".join(t["value"] for t in record["conversations"]).lower())
        grams[row] = set(zip(words, words[1:], words[2:]))

    def jaccard(a: int, b: int) -> float:
        return len(grams[a] & grams[b]) / len(grams[a] | grams[b])

    group_of = {row: k for k, g in enumerate(report.groups["near_duplicate"]) for row in g}
    near = [(a, b) for a in grams for b in grams if a < b and jaccard(a, b) >= 0.85]
    together = sum(group_of.get(a, -1) == group_of.get(b, -2) for a, b in near)
    assert len(near) > 300 and together >= 0.9 * len(near)  # 500 identity answers in a few dozen phrasings
    # No row is grouped without a close partner in its group (chaining stays near the threshold).
    for group in report.groups["near_duplicate"]:
        assert all(max(jaccard(a, b) for b in group if b != a) >= 0.7 for a in group)
    assert report.counts["near_duplicate"] >= 100


def test_glaive_toolcall_refusals_duplicates_and_a_cut_answer(shared_fixtures: Path, qwen) -> None:
    report = check_file(
        shared_fixtures / "data" / "sharegpt_glaive_toolcall.json", config=DataConfig(max_seq_len=2048), tokenizer=qwen
    )
    assert report.counts["refusal"] >= 30 and report.counts["exact_duplicate"] >= 30
    assert by_row(report)[244] >= {"too_long", "answer_truncated"}
    exact = {f.source.row: f.group for f in report.findings if f.code == "exact_duplicate"}
    assert exact[7] == 5 and any(g[:2] == [5, 7] for g in report.groups["exact_duplicate"])


def test_tokenizer_findings_are_reported_once_on_row_0(shared_fixtures: Path) -> None:
    from tunesmith.data.template import load_tokenizer

    phi3 = load_tokenizer(fixture_tokenizer_dir("phi-3-mini-instruct"))
    report = check_file(
        shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl", config=DataConfig(max_seq_len=2048), tokenizer=phi3
    )
    whole_file = [f for f in report.findings if f.source.row == FILE_ROW]
    assert {f.code for f in whole_file} >= {"stop_token_mismatch"}
    assert report.counts["stop_token_mismatch"] == 1
    assert report.findings[: len(whole_file)] == whole_file  # the whole file's findings come first


def test_a_row_the_template_rejects_is_a_row_finding(shared_fixtures: Path) -> None:
    from tunesmith.data.template import load_tokenizer

    mistral = load_tokenizer(fixture_tokenizer_dir("mistral-7b-instruct-v0.3"))
    report = check_file(
        shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl",
        config=DataConfig(max_seq_len=2048),
        tokenizer=mistral,
    )
    assert "template_error" in by_row(report)[4]  # system then assistant: "must start with a user message"
    assert report.stats["encoded_rows"] == 4


def test_every_flaw_in_one_small_file(tmp_path: Path, qwen) -> None:
    long_question = "Describe the table. " * 400
    rows = [
        chat("How many customers are there?", "SELECT COUNT(*) FROM customers;"),
        "{not json",
        chat("List products.", "I'm sorry, but I can't help with that."),
        chat("Show the email of a customer.", "SELECT email FROM {{table}};"),
        chat("Which orders shipped?", "   "),
        chat("how many   CUSTOMERS are there?", "select count(*) from customers;"),  # exact duplicate of row 1
        chat(long_question, "SELECT * FROM customers;"),  # the answer falls beyond the cut
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "SELECT 1;"},
                {"role": "user", "content": long_question},
                {"role": "assistant", "content": "SELECT 2;", "weight": 0},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = check_file(path, config=DataConfig(max_seq_len=512), tokenizer=qwen)
    assert by_row(report) == {
        2: {"invalid_json"},
        3: {"refusal"},
        4: {"placeholder"},
        5: {"empty_answer"},
        6: {"exact_duplicate"},
        7: {"too_long", "answer_truncated"},
        8: {"too_long"},  # only untrained tokens are cut: the weight-0 answer is not learned anyway
    }
    assert report.groups["exact_duplicate"] == [[1, 6]]
    assert report.stats["unreadable_rows"] == 1 and report.stats["encoded_rows"] == 7
    assert report.blocking  # invalid_json and answer_truncated are errors


def test_clean_file_passes(tmp_path: Path, qwen) -> None:
    path = write_jsonl(
        tmp_path / "ok.jsonl",
        [
            chat(f"How many orders in {y}?", f"SELECT COUNT(*) FROM orders WHERE order_date LIKE '{y}%';")
            for y in range(2000, 2010)
        ],
    )
    report = check_file(path, config=DataConfig(max_seq_len=512), tokenizer=qwen)
    assert report.findings == [] and not report.blocking and report.exit_code == 0
    assert verdict(report).startswith("OK")


def test_unreadable_input_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        check_file(tmp_path / "missing.jsonl", config=DataConfig())
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError):
        check_file(tmp_path / "empty.jsonl", config=DataConfig())


def test_json_and_console_reports(tmp_path: Path, shared_fixtures: Path, qwen) -> None:
    report = check_file(
        shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl",
        config=DataConfig(max_seq_len=2048),
        tokenizer=qwen,
        plot_dir=tmp_path,
    )
    write_report_json(report, tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["blocking"] is True and data["counts"]["answer_truncated"] == 1
    cut = next(f for f in data["findings"] if f["code"] == "answer_truncated")
    assert cut["line"] == 5 and cut["severity"] == "error" and cut["field"] == "messages[2].content" and cut["message"]
    assert data["verdict"].startswith("BLOCKED")

    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    for expected in (
        "answer_truncated",
        "error",
        "openai_toy_chat_flawed.jsonl:5 messages[2].content",
        "median",
        LENGTHS_PLOT_FILE,
        "BLOCKED",
    ):
        assert expected in text
