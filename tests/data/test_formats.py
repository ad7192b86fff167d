"""Format detection, conversion to messages and back, CSV/JSON/Parquet reading, convert_file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tunesmith.data.convert import convert_file
from tunesmith.data.formats import Unconvertible, read_records, to_format, to_messages
from tunesmith.data.schema import Conversation, DataError, Source
from tunesmith.data.validate import read_rows, validate_row

SRC = Source("t", 1)


def conversation(record: dict, fmt: str) -> Conversation:
    row = validate_row(to_messages(record, fmt), SRC)
    assert row.conversation is not None, row.findings
    return row.conversation


# ------------------------------------------------------------------ detection on the real files


@pytest.mark.parametrize(
    "name, fmt, count",
    [
        ("openai_toy_chat_flawed.jsonl", "messages", 5),
        ("sharegpt_fastchat_dummy.json", "sharegpt", 500),
        ("sharegpt_glaive_toolcall.json", "sharegpt", 300),
        ("alpaca_tiny.json", "alpaca", 100),
    ],
)
def test_detects_each_fixture_file(shared_fixtures: Path, name, fmt, count):
    detected, rows = read_rows(shared_fixtures / "data" / name)
    assert detected == fmt and len(rows) == count
    assert all(r.conversation is not None for r in rows)  # none has a format error


def test_unknown_format_lists_keys_and_accepted_formats(shared_fixtures: Path):
    with pytest.raises(DataError) as e:
        read_rows(shared_fixtures / "data" / "mt_bench_questions.jsonl")
    message = str(e.value)
    assert "'turns'" in message and "'question_id'" in message
    for fmt in ("messages", "sharegpt", "alpaca", "prompt-completion", "--format"):
        assert fmt in message


def test_mixed_formats_name_the_rows(tmp_path: Path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"}, {"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=r"alpaca \(rows 1\).*prompt-completion \(rows 2\)"):
        read_rows(path)


def test_a_broken_first_row_does_not_decide_the_format(tmp_path: Path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a"}, {"instruction": "a", "output": "b"}])
    fmt, rows = read_rows(path)
    assert fmt == "alpaca" and [r.codes for r in rows] == [{"unconvertible"}, {"no_system_message"}]
    assert rows[0].findings[0].field == "output"


def test_explicit_format_that_does_not_fit_makes_rows_unconvertible(tmp_path: Path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    fmt, rows = read_rows(path, fmt="prompt-completion")
    assert fmt == "prompt-completion" and rows[0].codes == {"unconvertible"}
    assert "prompt" in rows[0].findings[0].message


# ------------------------------------------------------------------ round trips on the real files


@pytest.mark.parametrize("name", ["alpaca_tiny.json", "sharegpt_fastchat_dummy.json", "sharegpt_glaive_toolcall.json"])
def test_round_trip_gives_the_original_records(shared_fixtures: Path, name):
    path = shared_fixtures / "data" / name
    fmt, rows = read_rows(path)
    assert [to_format(r.conversation, fmt) for r in rows] == json.loads(path.read_text(encoding="utf-8"))


def test_glaive_tool_calls_become_openai_tool_calls(shared_fixtures: Path):
    records = json.loads((shared_fixtures / "data" / "sharegpt_glaive_toolcall.json").read_text())
    conv = conversation(records[0], "sharegpt")
    roles = [m["role"] for m in conv.messages]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call_msg, tool_msg = conv.messages[3], conv.messages[4]
    assert call_msg["content"] is None
    (call,) = call_msg["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "search_recipes"
    assert json.loads(call["function"]["arguments"]) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert tool_msg["tool_call_id"] == call["id"] and json.loads(tool_msg["content"])["recipes"]
    assert len(call["id"]) == 9 and call["id"].isalnum()  # Mistral's template demands this
    assert conv.tools[0]["type"] == "function" and conv.tools[0]["function"]["name"] == "search_recipes"
    assert conversation(next(r for r in records if r["tools"] == "[]"), "sharegpt").tools == []


def test_fastchat_id_is_kept():
    record = {
        "id": "identity_0",
        "conversations": [{"from": "human", "value": "Who?"}, {"from": "gpt", "value": "Me."}],
    }
    conv = conversation(record, "sharegpt")
    assert conv.id == "identity_0" and conv.metadata == {}


# ------------------------------------------------------------------ handmade conversions


def test_alpaca_with_system_history_and_input():
    record = {
        "system": "Be terse.",
        "history": [["Hi", "Hello"]],
        "instruction": "Translate",
        "input": "chat",
        "output": "cat",
        "source": "x",
    }
    conv = conversation(record, "alpaca")
    assert conv.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Translate\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]
    assert conv.metadata == {"source": "x"}
    assert to_format(conv, "alpaca") == record


def test_alpaca_back_and_forth_keeps_the_messages_even_with_blank_lines():
    for user in ["a\n\nb\n\nc", "a\n\n", "\n\nb", "plain"]:
        conv = conversation(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "x"}]}, "messages"
        )
        again = conversation(to_format(conv, "alpaca"), "alpaca")
        assert again.messages == conv.messages


def test_sharegpt_system_tools_and_parallel_calls_round_trip():
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "é"}}]
    record = {
        "system": "You call tools.",
        "tools": json.dumps([{"name": "a", "parameters": {}}, {"name": "b", "parameters": {}}]),
        "conversations": [
            {"from": "human", "value": "do both"},
            {"from": "function_call", "value": json.dumps(calls, ensure_ascii=False)},
            {"from": "observation", "value": "1"},
            {"from": "observation", "value": "2"},
            {"from": "gpt", "value": "done"},
        ],
    }
    conv = conversation(record, "sharegpt")
    ids = [c["id"] for c in conv.messages[2]["tool_calls"]]
    assert conv.messages[0] == {"role": "system", "content": "You call tools."}
    assert [m.get("tool_call_id") for m in conv.messages[3:5]] == ids and len(set(ids)) == 2
    assert to_format(conv, "sharegpt") == record


def test_sharegpt_tools_as_list_are_accepted():
    record = {
        "tools": [{"name": "f"}],
        "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}],
    }
    conv = conversation(record, "sharegpt")
    assert conv.tools == [{"type": "function", "function": {"name": "f"}}]
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from", "bot"),
        ({"conversations": [{"from": "human", "value": 3}]}, "conversations[0].value", "int"),
        ({"conversations": [{"from": "human", "value": "x", "lang": "en"}]}, "conversations[0]", "lang"),
        ({"conversations": [{"from": "observation", "value": "x"}]}, "conversations[0].from", "function_call"),
        ({"conversations": [{"from": "function_call", "value": "{not json"}]}, "conversations[0].value", "JSON"),
        (
            {"conversations": [{"from": "function_call", "value": '{"arguments": {}}'}]},
            "conversations[0].value",
            "name",
        ),
        ({"conversations": "hi"}, "conversations", "list"),
        ({"conversations": [], "tools": "[{"}, "tools", "JSON"),
        ({"conversations": [], "tools": [1]}, "tools[0]", "name"),
    ],
)
def test_sharegpt_unconvertible_rows_say_why(record, field, words):
    with pytest.raises(Unconvertible) as e:
        to_messages(record, "sharegpt")
    assert e.value.field == field and words in str(e.value)


@pytest.mark.parametrize(
    "record",
    [
        {"instruction": "a", "output": 5},
        {"instruction": "a", "output": "b", "history": [["only one"]]},
        {"prompt": "a", "completion": None},
    ],
)
def test_wrong_field_types_are_unconvertible(record):
    fmt = "alpaca" if "instruction" in record else "prompt-completion"
    with pytest.raises(Unconvertible):
        to_messages(record, fmt)


def test_prompt_completion_strings_aliases_and_trl_conversational_form():
    record = {"prompt": "2+2?", "completion": "4", "id": "q1"}
    conv = conversation(record, "prompt-completion")
    assert [m["role"] for m in conv.messages] == ["user", "assistant"] and conv.id == "q1"
    assert to_format(conv, "prompt-completion") == record
    assert conversation({"question": "2+2?", "answer": "4"}, "prompt-completion").messages == conv.messages
    trl = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    conv = conversation(trl, "prompt-completion")
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
    assert to_format(conv, "prompt-completion") == trl


def test_to_format_refuses_what_the_target_cannot_hold():
    call = {"id": "call00000", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    conv = conversation(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "content": "1", "tool_call_id": "call00000"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "messages",
    )
    with pytest.raises(ValueError, match="alpaca"):
        to_format(conv, "alpaca")
    with pytest.raises(ValueError):
        to_format(conv, "csv")


# ------------------------------------------------------------------ file kinds


def test_csv_columns_map_to_formats_and_extra_columns_are_metadata(tmp_path: Path):
    cases = {
        "instruction,input,output,topic\nTranslate,chat,cat,fr\n": ("alpaca", "Translate\n\nchat", {"topic": "fr"}),
        "prompt,completion\nq,a\n": ("prompt-completion", "q", {}),
        "question,answer\nq,a\n": ("prompt-completion", "q", {}),
    }
    for i, (text, (fmt, user, metadata)) in enumerate(cases.items()):
        path = tmp_path / f"{i}.csv"
        path.write_text(text)
        for asked in ("auto", "csv"):
            detected, rows = read_rows(path, fmt=asked)
            assert detected == fmt
            assert rows[0].conversation.messages[0] == {"role": "user", "content": user}
            assert rows[0].conversation.metadata == metadata


def test_csv_line_numbers_survive_quoted_newlines_and_blank_lines(tmp_path: Path):
    path = tmp_path / "a.csv"
    path.write_text('prompt,completion\n"two\nlines",a\n\nq,"b\nc"\nq,a\n', encoding="utf-8")
    _, rows = read_records(path)
    assert [r.source.row for r in rows] == [2, 5, 7]
    assert rows[0].raw == {"prompt": "two\nlines", "completion": "a"}


def test_format_csv_on_a_jsonl_file_is_an_error(tmp_path: Path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(DataError, match="CSV"):
        read_rows(path, fmt="csv")


def test_json_object_holding_a_list_or_being_one_example(tmp_path: Path):
    example = {"prompt": "q", "completion": "a"}
    holder = tmp_path / "holder.json"
    holder.write_text(json.dumps({"version": 1, "data": [example, example]}))
    kind, rows = read_records(holder)
    assert kind == "json" and [r.source.row for r in rows] == [1, 2] and rows[1].raw == example
    single = tmp_path / "single.json"
    single.write_text(json.dumps(example))
    assert [r.raw for r in read_records(single)[1]] == [example]
    two_lists = tmp_path / "two.json"
    two_lists.write_text(json.dumps({"train": [example], "test": [example]}))
    with pytest.raises(DataError, match="train.*test"):
        read_records(two_lists)


def test_json_extension_holding_jsonl_and_sniffed_extensions(tmp_path: Path):
    records = [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": "a2"}]
    for name in ("lines.json", "lines.txt", "noext"):
        kind, rows = read_records(write_jsonl(tmp_path / name, records))
        assert kind == "jsonl" and [r.raw for r in rows] == records
    array = tmp_path / "array.data"
    array.write_text(json.dumps(records, indent=2))
    assert read_records(array)[0] == "json"


def test_parquet_rows_keep_their_position(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], "id": f"r{i}"}
        for i in range(5)
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)
    fmt, rows = read_rows(path)
    assert fmt == "messages" and [r.source.row for r in rows] == [1, 2, 3, 4, 5]
    assert [r.conversation.to_json() for r in rows] == records


# ------------------------------------------------------------------ convert_file


def test_convert_file_writes_valid_messages_and_reports_what_it_skipped(tmp_path: Path):
    good = [{"instruction": f"q{i}", "input": "", "output": f"a{i}", "id": f"r{i}"} for i in range(3)]
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps(good[0]),
        "{not json",
        json.dumps({"instruction": "q", "output": 3}),
        json.dumps(good[1]),
        json.dumps(good[2]),
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "messages.jsonl"
    result = convert_file(path, out)
    assert (result.format, result.rows_read, result.rows_written, result.failed) == ("alpaca", 5, 3, 2)
    assert [r.source.row for r in result.skipped] == [2, 3]
    assert result.reasons() == {"invalid_json": 1, "unconvertible": 1}
    summary = result.summary()
    assert f"{path}:2" in summary and f"{path}:3:output" in summary and "3 of 5" in summary
    written = read_jsonl(out)
    assert [w["id"] for w in written] == ["r0", "r1", "r2"]
    fmt, rows = read_rows(out)
    assert fmt == "messages" and all(r.conversation is not None for r in rows)
    assert [to_format(r.conversation, "alpaca") for r in rows] == good
    assert sorted(p.name for p in out.parent.iterdir()) == ["messages.jsonl"]  # no temp file left


def test_convert_file_leaves_out_rows_that_fail_the_messages_checks(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"conversations": [{"from": "human", "value": "q"}]},
        ],
    )
    result = convert_file(path, tmp_path / "o.jsonl")
    assert result.rows_written == 1 and result.reasons() == {"no_assistant_message": 1}


def test_convert_file_on_real_sharegpt_tool_calls(shared_fixtures: Path, tmp_path: Path):
    result = convert_file(shared_fixtures / "data" / "sharegpt_glaive_toolcall.json", tmp_path / "o.jsonl")
    assert (result.format, result.rows_written, result.failed) == ("sharegpt", 300, 0)
    fmt, rows = read_rows(tmp_path / "o.jsonl")
    assert fmt == "messages" and sum(bool(r.conversation.tools) for r in rows) == 191
