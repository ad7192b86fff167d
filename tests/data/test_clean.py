"""`data clean`: every row read lands in exactly one output, for the right reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import chat_row, fixture_tokenizer_dir, read_jsonl, write_jsonl
from tunesmith.config import DataConfig
from tunesmith.data.check import check_file
from tunesmith.data.clean import clean_file
from tunesmith.data.schema import DEFAULT_DROP

SYSTEM = {"role": "system", "content": "You write SQL."}
NEAR_Q = "Which customers from Lyon signed up in 2021 and ordered more than three kitchen products last spring?"


def chat(q: str, a: str, **meta: object) -> dict:
    return chat_row(q, a, system=SYSTEM["content"], **meta)


@pytest.fixture
def flawed(tmp_path: Path) -> Path:
    rows = [
        chat("How many customers?", "SELECT COUNT(*) FROM customers;", id="a"),  # 1
        "{broken json",  # 2
        "",  # blank: not a row
        chat("List products.", "As an AI language model, I cannot see your database."),  # 4
        chat("HOW MANY CUSTOMERS?", "select count(*) from customers;"),  # 5: exact duplicate of 1
        chat("Email of Ann?", "SELECT email FROM customers WHERE name = '[Your Name]';"),  # 6: placeholder
        chat("Orders?", ""),  # 7: empty answer
        chat(NEAR_Q, "SELECT 1;"),  # 8
        chat(NEAR_Q.replace("Which", "What"), "SELECT 1;"),  # 9: near duplicate of 8 (kept by default)
        {
            "messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        },  # 10: unknown role
        "[1, 2]",  # 11: not an object
    ]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def test_every_row_lands_in_exactly_one_output(flawed: Path, tmp_path: Path) -> None:
    out, rej = tmp_path / "clean.jsonl", tmp_path / "rejects.jsonl"
    result = clean_file(flawed, out, rej, config=DataConfig())
    kept, rejected = read_jsonl(out), read_jsonl(rej)
    assert result.rows_read == 10  # 11 lines, one blank
    assert result.kept + result.rejected == result.rows_read
    assert (len(kept), len(rejected)) == (result.kept, result.rejected)
    assert {r["line"]: sorted(x["code"] for x in r["reasons"]) for r in rejected} == {
        2: ["invalid_json"],
        4: ["refusal"],
        5: ["exact_duplicate"],
        6: ["placeholder"],
        7: ["empty_answer"],
        10: ["unknown_role"],
        11: ["not_an_object"],
    }
    assert [r["messages"][1]["content"] for r in kept] == [
        "How many customers?",
        NEAR_Q,
        NEAR_Q.replace("Which", "What"),
    ]
    assert kept[0]["id"] == "a"  # metadata survives


def test_rejects_keep_the_row_as_read(flawed: Path, tmp_path: Path) -> None:
    clean_file(flawed, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig())
    rejects = {r["line"]: r for r in read_jsonl(tmp_path / "r.jsonl")}
    assert rejects[2]["row"] == "{broken json"  # undecodable text, verbatim
    assert rejects[11]["row"] == [1, 2]
    assert rejects[10]["row"]["messages"][0]["role"] == "human"
    assert rejects[10]["reasons"][0]["field"] == "messages[0].role" and rejects[10]["reasons"][0]["message"]


def test_drop_codes_choose_what_goes(flawed: Path, tmp_path: Path) -> None:
    out, rej = tmp_path / "c.jsonl", tmp_path / "r.jsonl"
    result = clean_file(flawed, out, rej, config=DataConfig(), drop=["refusal", "near_duplicate"])
    lines = sorted(r["line"] for r in read_jsonl(rej))
    # Unreadable rows always go (they cannot be written as messages); the first of the near pair stays.
    assert lines == [2, 4, 9, 10, 11]
    assert result.kept == 5 and result.reasons["near_duplicate"] == 1


def test_a_duplicate_stands_in_when_its_first_row_is_rejected(tmp_path: Path) -> None:
    rows = [
        chat(NEAR_Q, "SELECT 1; -- by [Your Name]"),  # rejected: placeholder
        chat(NEAR_Q.replace("Which", "What"), "SELECT 1; -- by  Ann"),  # near copy: must survive
        chat(NEAR_Q.replace("Which", "And which"), "SELECT 1; -- by  Ann"),  # near copy of both: goes
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    clean_file(
        path,
        tmp_path / "c.jsonl",
        tmp_path / "r.jsonl",
        config=DataConfig(near_dup_threshold=0.7),
        drop=["placeholder", "near_duplicate"],
    )
    assert [r["line"] for r in read_jsonl(tmp_path / "r.jsonl")] == [1, 3]
    assert len(read_jsonl(tmp_path / "c.jsonl")) == 1


def test_clean_output_checks_clean_and_is_deterministic(flawed: Path, tmp_path: Path) -> None:
    clean_file(flawed, tmp_path / "c1.jsonl", tmp_path / "r1.jsonl", config=DataConfig())
    clean_file(flawed, tmp_path / "c2.jsonl", tmp_path / "r2.jsonl", config=DataConfig())
    assert (tmp_path / "c1.jsonl").read_bytes() == (tmp_path / "c2.jsonl").read_bytes()
    assert (tmp_path / "r1.jsonl").read_bytes() == (tmp_path / "r2.jsonl").read_bytes()
    again = check_file(tmp_path / "c1.jsonl", config=DataConfig())
    assert not set(again.counts) & DEFAULT_DROP and not again.blocking


def test_with_a_tokenizer_cut_answers_are_dropped(shared_fixtures: Path, tmp_path: Path) -> None:
    from tunesmith.data.template import load_tokenizer

    tok = load_tokenizer(fixture_tokenizer_dir("qwen2.5-instruct"))
    src = shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl"
    result = clean_file(
        src, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig(max_seq_len=2048), tokenizer=tok
    )
    assert (result.rows_read, result.kept, result.rejected) == (5, 4, 1)
    [reject] = read_jsonl(tmp_path / "r.jsonl")
    assert reject["line"] == 5 and [r["code"] for r in reject["reasons"]] == ["answer_truncated"]
    assert "5 rows read: 4 kept" in result.summary()


def test_rejected_for_lists_only_real_reasons(tmp_path: Path):
    # An unreadable row without a system message used to be "rejected for: ..., no_system_message 1".
    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    rows = [{"messages": [user, answer]}, {"messages": [user, user, answer]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = clean_file(path, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig())
    assert result.reasons == {"consecutive_roles": 1}
    assert "rejected for: consecutive_roles 1" in result.summary() and "no_system_message" not in result.summary()
    (reject,) = read_jsonl(tmp_path / "r.jsonl")
    assert [r["code"] for r in reject["reasons"]] == ["consecutive_roles"]
