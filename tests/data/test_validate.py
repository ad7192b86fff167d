"""validate_row: every format code on a tiny handmade row, and read_rows on real and handmade files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.schema import CODES, Severity, Source
from tunesmith.data.validate import read_rows, validate_row

SRC = Source("t.jsonl", 7)
USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
SYSTEM = {"role": "system", "content": "be brief"}
CALL = {"id": "call00000", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


def msgs(*messages):
    return {"messages": list(messages)}


# (row, the exact set of codes it must get, field of the code under test)
CASES = {
    "not_an_object": ([USER, ASSISTANT], {"not_an_object"}, None),
    "missing_messages": ({"prompt": "hi"}, {"missing_messages"}, "messages"),
    "messages_not_list": ({"messages": "hi"}, {"missing_messages"}, "messages"),
    "messages_empty": ({"messages": []}, {"missing_messages"}, "messages"),
    "message_not_object": (msgs(SYSTEM, "hi", ASSISTANT), {"message_not_object"}, "messages[1]"),
    "missing_role": (msgs(SYSTEM, {"content": "hi"}, ASSISTANT), {"missing_role"}, "messages[1].role"),
    "unknown_role": (msgs(SYSTEM, {"role": "human", "content": "hi"}, ASSISTANT), {"unknown_role"}, "messages[1].role"),
    "role_not_a_string": (
        msgs(SYSTEM, {"role": ["user"], "content": "hi"}, ASSISTANT),
        {"unknown_role"},
        "messages[1].role",
    ),
    "unknown_message_key": (
        msgs(SYSTEM, {**USER, "from": "me"}, ASSISTANT),
        {"unknown_message_key"},
        "messages[1].from",
    ),
    "missing_content": (msgs(SYSTEM, {"role": "user"}, ASSISTANT), {"missing_content"}, "messages[1].content"),
    "null_content": (
        msgs(SYSTEM, {"role": "user", "content": None}, ASSISTANT),
        {"missing_content"},
        "messages[1].content",
    ),
    "assistant_null_content_no_calls": (
        msgs(SYSTEM, USER, {"role": "assistant", "content": None}),
        {"missing_content"},
        "messages[2].content",
    ),
    "non_string_content": (
        msgs(SYSTEM, {"role": "user", "content": 42}, ASSISTANT),
        {"non_string_content"},
        "messages[1].content",
    ),
    "image_part": (
        msgs(SYSTEM, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, ASSISTANT),
        {"non_string_content"},
        "messages[1].content",
    ),
    "no_assistant_message": (msgs(SYSTEM, USER), {"no_assistant_message"}, None),
    "last_not_assistant": (msgs(SYSTEM, USER, ASSISTANT, USER), {"last_not_assistant"}, "messages[3].role"),
    "consecutive_user": (msgs(SYSTEM, USER, USER, ASSISTANT), {"consecutive_roles"}, "messages[2].role"),
    "consecutive_assistant": (msgs(SYSTEM, USER, ASSISTANT, ASSISTANT), {"consecutive_roles"}, "messages[3].role"),
    "no_user_message": (msgs(SYSTEM, ASSISTANT), {"no_user_message"}, None),
    "no_system_message": (msgs(USER, ASSISTANT), {"no_system_message"}, None),
    "tools_not_a_list": ({**msgs(SYSTEM, USER, ASSISTANT), "tools": "[]"}, {"unconvertible"}, "tools"),
    # tool_calls in OpenAI's shape, and every tool message answering a call (adversarial findings).
    "tool_calls_not_a_list": (
        msgs(SYSTEM, USER, {"role": "assistant", "content": "x", "tool_calls": "notalist"}),
        {"invalid_tool_call"},
        "messages[2].tool_calls",
    ),
    "tool_call_wrong_shape": (
        msgs(SYSTEM, USER, {"role": "assistant", "content": "x", "tool_calls": [{"foo": 1}]}),
        {"invalid_tool_call"},
        "messages[2].tool_calls[0]",
    ),
    "tool_call_arguments_not_json": (
        msgs(
            SYSTEM, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{x"}}]}
        ),
        {"invalid_tool_call"},
        "messages[2].tool_calls[0]",
    ),
    "tool_call_arguments_a_list": (
        msgs(
            SYSTEM, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]}
        ),
        {"invalid_tool_call"},
        "messages[2].tool_calls[0]",
    ),
    "tool_call_name_not_a_string": (
        msgs(SYSTEM, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": 42, "arguments": {}}}]}),
        {"invalid_tool_call"},
        "messages[2].tool_calls[0]",
    ),
    "tool_answers_no_call": (
        msgs(SYSTEM, USER, {"role": "tool", "content": "1", "tool_call_id": "nope"}, ASSISTANT),
        {"invalid_tool_call"},
        "messages[2].tool_call_id",
    ),
    "tool_without_call_id": (
        msgs(SYSTEM, USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "1"}, ASSISTANT),
        {"invalid_tool_call"},
        "messages[3].tool_call_id",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_code_on_a_tiny_row(name):
    raw, expected, field = CASES[name]
    row = validate_row(raw, SRC)
    assert row.codes == expected
    finding = row.findings[0]
    assert finding.field == field and finding.source == SRC and finding.message
    blocking = any(CODES[c].severity is Severity.ERROR for c in expected)
    assert (row.conversation is None) == blocking
    assert row.raw is raw


def test_every_format_code_of_the_brief_is_covered():
    covered = set().union(*(codes for _, codes, _ in CASES.values()))
    brief = {
        "not_an_object",
        "missing_messages",
        "message_not_object",
        "missing_role",
        "unknown_role",
        "unknown_message_key",
        "missing_content",
        "non_string_content",
        "no_assistant_message",
        "last_not_assistant",
        "consecutive_roles",
        "no_user_message",
        "no_system_message",
    }
    assert brief <= covered


def test_messages_name_the_problem_and_the_fix():
    row = validate_row(msgs(SYSTEM, {"role": "human", "content": "hi"}, ASSISTANT), SRC)
    assert "'human'" in row.findings[0].message and "'user'" in row.findings[0].message
    row = validate_row(msgs(SYSTEM, USER, USER, ASSISTANT), SRC)
    assert "two user messages" in row.findings[0].message


def test_no_assistant_is_not_also_reported_as_last_not_assistant():
    assert validate_row(msgs(USER), SRC).codes == {"no_assistant_message", "no_system_message"}


def test_tool_call_turns_are_valid():
    call = {"id": "call00000", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = validate_row(
        msgs(
            SYSTEM,
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call00001"}]},
            {"role": "tool", "content": "1", "tool_call_id": "call00000"},
            {"role": "tool", "content": "2", "tool_call_id": "call00001"},
            {"role": "assistant", "tool_calls": [call]},  # content may be absent too
            {"role": "tool", "content": "3", "tool_call_id": "call00000"},
            ASSISTANT,
        ),
        SRC,
    )
    assert row.findings == [] and row.conversation is not None


def test_text_parts_are_joined_and_raw_is_untouched():
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    raw = msgs(SYSTEM, {"role": "user", "content": parts}, ASSISTANT)
    row = validate_row(raw, SRC)
    assert row.findings == []
    assert row.conversation.messages[1] == {"role": "user", "content": "Hello, world"}
    assert raw["messages"][1]["content"] is parts


def test_id_and_other_fields_are_kept():
    raw = {"id": "ex-1", "source": "web", **msgs(USER, ASSISTANT)}
    conv = validate_row(raw, SRC).conversation
    assert (conv.id, conv.metadata, conv.source) == ("ex-1", {"source": "web"}, SRC)
    assert conv.to_json() == raw
    numeric = {"id": 17, **msgs(USER, ASSISTANT)}  # not a string id: kept as it was, in metadata
    conv = validate_row(numeric, SRC).conversation
    assert conv.id is None and conv.to_json() == numeric


def test_openai_cookbook_flawed_file(shared_fixtures: Path):
    fmt, rows = read_rows(shared_fixtures / "data" / "openai_toy_chat_flawed.jsonl")
    assert fmt == "messages" and [r.source.row for r in rows] == [1, 2, 3, 4, 5]
    by_line = {r.source.row: r for r in rows}
    assert by_line[3].codes == {"no_system_message"}
    assert by_line[4].codes == {"no_user_message"}
    for line in (1, 2):
        assert not any(f.severity is Severity.ERROR for f in by_line[line].findings)
        assert by_line[line].conversation is not None


def test_read_rows_converts_then_checks_and_keeps_the_raw_record(tmp_path: Path):
    records = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "a"},
                {"from": "human", "value": "and?"},
            ]
        },
        {"conversations": [{"from": "narrator", "value": "hi"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n{broken\n" + json.dumps(records[2]) + "\n")
    fmt, rows = read_rows(path)
    assert fmt == "sharegpt"
    assert [(r.source.row, sorted(r.codes)) for r in rows] == [
        (1, ["no_system_message"]),
        (2, ["last_not_assistant", "no_system_message"]),
        (4, ["invalid_json"]),
        (5, ["unconvertible"]),
    ]
    assert rows[1].raw == records[1] and rows[1].findings[0].field == "messages[2].role"
    assert rows[2].raw == "{broken"
    assert rows[3].raw == records[2] and rows[3].findings[0].field == "conversations[0].from"
    assert "narrator" in rows[3].findings[0].message


def test_non_object_rows_of_a_converted_format_are_not_an_object(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n[1, 2]\n')
    _, rows = read_rows(path)
    assert [r.codes for r in rows] == [{"no_system_message"}, {"not_an_object"}]


def test_tool_call_arguments_may_be_an_object():
    call = {**CALL, "function": {"name": "f", "arguments": {"a": 1}}}
    row = validate_row(
        msgs(
            SYSTEM,
            USER,
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "content": "1", "tool_call_id": CALL["id"]},
            ASSISTANT,
        ),
        SRC,
    )
    assert row.findings == [] and row.conversation is not None


def test_a_non_string_function_name_does_not_abort_a_check_with_a_tokenizer(tmp_path: Path):
    from tests.conftest import fixture_tokenizer_dir
    from tunesmith.config import DataConfig
    from tunesmith.data.check import check_file
    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(fixture_tokenizer_dir("qwen2.5-instruct"))
    bad = msgs(
        SYSTEM, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": 42, "arguments": "{}"}}]}
    )
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(msgs(SYSTEM, USER, ASSISTANT)) + "\n", encoding="utf-8")
    report = check_file(path, config=DataConfig(), tokenizer=tokenizer)
    assert report.blocking and report.counts.get("invalid_tool_call") == 1
    assert [f.source.row for f in report.findings if f.code == "invalid_tool_call"] == [1]
    assert report.stats["encoded_rows"] == 1  # the good row was templated; the check went on


def test_template_matching_survives_a_non_string_name_given_directly():
    from tests.conftest import fixture_tokenizer_dir
    from tunesmith.data.template import Encoded, TemplateError, encode, load_tokenizer

    tokenizer = load_tokenizer(fixture_tokenizer_dir("qwen2.5-instruct"))
    call = {**CALL, "function": {"name": 42, "arguments": "{}"}}
    messages = [SYSTEM, USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    try:  # the template's own verdict either way; never "'in <string>' requires string as left operand"
        assert isinstance(encode(messages, tokenizer), Encoded)
    except TemplateError:
        pass
