"""Files that are broken in the ways real files are: each gives a clear message, never a traceback.

Whole-file failures raise DataError (the CLI turns it into exit code 2); a broken row becomes a
finding on that row and the rest of the file is still read.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
import typer

from tunesmith.cli.errors import EXIT_UNREADABLE, friendly_errors
from tunesmith.data.convert import convert_file
from tunesmith.data.formats import read_records
from tunesmith.data.schema import DataError
from tunesmith.data.validate import read_rows

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_LINE = json.dumps(GOOD).encode()


def make(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


UNREADABLE = {
    "missing": ("missing.jsonl", None, "no such file"),
    "directory": ("adir", "dir", "is a directory"),
    "empty": ("empty.jsonl", b"", "empty"),
    "blank_lines_only": ("blank.jsonl", b"\n  \n\r\n\t\n", "no examples"),
    "whitespace_json": ("blank.json", b"  \n ", "only whitespace"),
    "header_only_csv": ("h.csv", b"prompt,completion\n", "no examples"),
    "binary": ("model.jsonl", b"\x00\x01\x02weights\x00" * 100, "binary"),
    "utf16": ("u16.jsonl", json.dumps(GOOD).encode("utf-16"), "UTF-16"),
    "gzip": ("d.jsonl", gzip.compress(GOOD_LINE), "gzip"),
    "unknown_extension": ("notes.txt", b"just some prose\n", "cannot tell the file type"),
    "broken_json_file": ("a.json", b'[\n {"messages": []},\n {"messages": [}\n]', "not valid JSON"),
    "json_scalar": ("a.json", b'"hello"', "single JSON value"),
    "invalid_utf8_json": ("a.json", b'[\n{"prompt": "caf\xe9", "completion": "x"}]', "not valid UTF-8"),
    "not_parquet": ("a.parquet", b"PAR1 but not really", "Parquet"),
    "pretty_printed_jsonl": (
        "a.jsonl",
        json.dumps([GOOD], indent=2).encode(),
        "no row is a JSON object (line 1: not valid JSON",
    ),
    "csv_repeated_header": ("a.csv", b"prompt,prompt\nq,a\n", "repeated"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_raise_a_clear_error_and_exit_2(tmp_path: Path, capsys, case):
    name, data, words = UNREADABLE[case]
    path = tmp_path / name
    if data == "dir":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    with pytest.raises(typer.Exit) as e, friendly_errors():
        read_rows(path)
    assert e.value.exit_code == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert str(path) in err and words in err and "Traceback" not in err


def test_json_errors_name_the_line(tmp_path: Path):
    path = make(tmp_path, "a.json", b'[\n {"prompt": "a", "completion": "b"},\n {"prompt": "a" "completion": "b"}\n]')
    with pytest.raises(DataError) as e:
        read_records(path)
    assert e.value.row == 3 and f"{path}:3:" in str(e.value)


def test_bom_is_stripped(tmp_path: Path):
    bom = b"\xef\xbb\xbf"
    kind, rows = read_records(make(tmp_path, "a.jsonl", bom + GOOD_LINE + b"\n" + GOOD_LINE + b"\n"))
    assert [r.raw for r in rows] == [GOOD, GOOD] and not any(r.findings for r in rows)
    _, rows = read_records(make(tmp_path, "a.json", bom + json.dumps([GOOD]).encode()))
    assert [r.raw for r in rows] == [GOOD]
    _, rows = read_records(make(tmp_path, "a.csv", bom + b"prompt,completion\nq,a\n"))
    assert rows[0].raw == {"prompt": "q", "completion": "a"}  # not "\ufeffprompt"


def test_crlf_line_endings(tmp_path: Path):
    _, rows = read_records(make(tmp_path, "a.jsonl", GOOD_LINE + b"\r\n{oops\r\n\r\n" + GOOD_LINE + b"\r\n"))
    assert [r.source.row for r in rows] == [1, 2, 4]
    assert rows[1].raw == "{oops" and rows[1].codes == {"invalid_json"}
    _, rows = read_records(make(tmp_path, "a.csv", b"prompt,completion\r\nq,a\r\nq2,a2\r\n"))
    assert [(r.source.row, r.raw["completion"]) for r in rows] == [(2, "a"), (3, "a2")]


def test_invalid_json_lines_are_row_findings_with_right_line_numbers(tmp_path: Path):
    data = b"\n" + GOOD_LINE + b"\n\n{'single': 'quotes'}\n" + GOOD_LINE + b"\n"
    fmt, rows = read_rows(make(tmp_path, "a.jsonl", data))
    assert fmt == "messages" and [r.source.row for r in rows] == [2, 4, 5]
    bad = rows[1]
    assert bad.codes == {"invalid_json"} and bad.conversation is None and bad.raw == "{'single': 'quotes'}"
    assert "not valid JSON" in bad.findings[0].message and "column 2" in bad.findings[0].message


def test_invalid_utf8_spoils_only_its_row(tmp_path: Path):
    bad_line = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    _, rows = read_rows(make(tmp_path, "a.jsonl", GOOD_LINE + b"\n" + bad_line + b"\n" + GOOD_LINE + b"\n"))
    assert [r.codes for r in rows] == [{"no_system_message"}, {"invalid_json"}, {"no_system_message"}]
    finding = rows[1].findings[0]
    assert "UTF-8" in finding.message and "0xe9" in finding.message and finding.source.row == 2
    assert "caf\ufffd" in rows[1].raw  # the rejects file gets readable text
    _, rows = read_records(make(tmp_path, "a.csv", b"prompt,completion\nq,caf\xe9\nq,a\n"))
    assert [r.codes for r in rows] == [{"invalid_json"}, set()] and rows[0].source.row == 2
    assert "UTF-8" in rows[0].findings[0].message


def test_csv_row_with_wrong_field_count(tmp_path: Path):
    _, rows = read_records(make(tmp_path, "a.csv", b"prompt,completion\nq,a,extra\nq,a\n"))
    assert rows[0].codes == {"unconvertible"} and "3 fields" in rows[0].findings[0].message
    assert rows[1].raw == {"prompt": "q", "completion": "a"}


def test_a_50_mb_line_is_one_row_read_in_reasonable_time(tmp_path: Path):
    answer = "x" * 50_000_000
    record = {"messages": [{"role": "user", "content": "long?"}, {"role": "assistant", "content": answer}]}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(GOOD) + "\n")
    start = time.perf_counter()
    fmt, rows = read_rows(path)
    seconds = time.perf_counter() - start
    assert [r.source.row for r in rows] == [1, 2]
    assert len(rows[0].conversation.messages[1]["content"]) == 50_000_000
    assert seconds < 20, f"reading one 50 MB line took {seconds:.1f} s"  # ~0.5 s here; quadratic reads take minutes


def test_lone_surrogate_escapes_are_row_findings_not_a_crash_on_write(tmp_path: Path):
    # JSON parses "\ud83d" (half an emoji) into a string that no UTF-8 file can hold.
    broken = b'{"messages": [{"role": "user", "content": "hi \\ud83d"}, {"role": "assistant", "content": "ok"}]}'
    paired = b'{"messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}, {"role": "assistant", "content": "ok"}]}'
    path = make(tmp_path, "a.jsonl", broken + b"\n" + paired + b"\n")
    result = convert_file(path, tmp_path / "out.jsonl")
    assert (result.rows_written, [r.source.row for r in result.skipped]) == (1, [1])
    assert result.skipped[0].codes == {"invalid_json"} and "pair" in result.skipped[0].findings[0].message
    assert "\U0001f600" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    array = make(tmp_path, "a.json", b"[" + broken + b",\n" + paired + b"]")
    _, rows = read_records(array)
    assert [r.codes for r in rows] == [{"invalid_json"}, set()]
    json.dumps(rows[0].raw, ensure_ascii=False).encode("utf-8")  # the rejects file can hold it
