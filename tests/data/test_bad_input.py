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


def test_a_50_mb_line_is_a_finding_read_past_in_bounded_memory(tmp_path: Path):
    """A 50 MB line once took ~40x its size (2 GB) on its way through check and clean. It is now
    read past in chunks: never held whole, a `line_too_long` row, and the rows after it go on."""
    import tracemalloc

    from tunesmith.data.formats import MAX_LINE_BYTES

    answer = "x" * 50_000_000
    record = {"messages": [{"role": "user", "content": "long?"}, {"role": "assistant", "content": answer}]}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(GOOD) + "\n")
    del answer, record
    tracemalloc.start()
    try:
        start = time.perf_counter()
        fmt, rows = read_rows(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.source.row for r in rows] == [1, 2]
    assert rows[0].codes == {"line_too_long"} and "47.7 MiB" in rows[0].findings[0].message
    assert len(rows[0].raw) < 2000 and rows[1].conversation is not None
    assert peak < 3 * MAX_LINE_BYTES, f"peak {peak / 2**20:.0f} MiB"  # one chunk at a time, not the 50 MB line
    assert seconds < 20, f"reading one 50 MB line took {seconds:.1f} s"


def test_a_line_just_under_the_cap_is_still_read(tmp_path: Path, monkeypatch):
    import tunesmith.data.formats as formats

    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 300)
    short = json.dumps(GOOD)
    long = json.dumps({**GOOD, "note": "y" * 400})
    path = make(tmp_path, "a.jsonl", (short + "\n" + long + "\n" + short + "\n").encode())
    _, rows = read_rows(path)
    assert [sorted(r.codes - {"no_system_message"}) for r in rows] == [[], ["line_too_long"], []]
    assert [r.source.row for r in rows] == [1, 2, 3]


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


def test_a_pretty_printed_json_array_saved_as_jsonl_is_read_as_the_array(tmp_path: Path):
    # It used to be "line 1: not valid JSON" with no hint that the file is one JSON array.
    path = make(tmp_path, "a.jsonl", json.dumps([GOOD, GOOD], indent=2).encode())
    fmt, rows = read_rows(path)
    assert fmt == "messages" and len(rows) == 2 and all(r.conversation is not None for r in rows)


@pytest.mark.parametrize("depth", [100_000, 990])
def test_a_recursion_bomb_row_is_an_invalid_json_finding_and_the_others_go_on(tmp_path: Path, depth: int):
    """100,000 nested lists used to raise RecursionError out of convert, check and clean; 990 parses
    but would crash later, when written. Either way: a finding at file:line, the other rows written."""
    from tunesmith.config import DataConfig
    from tunesmith.data.clean import clean_file

    bomb = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    path = make(
        tmp_path, "a.jsonl", GOOD_LINE + b"\n" + bomb + b"\n" + GOOD_LINE.replace(b"hello", b"hi there") + b"\n"
    )
    _, rows = read_rows(path)
    assert rows[1].codes == {"invalid_json"} and "levels deep" in rows[1].findings[0].message
    assert f"{path}:2" == str(rows[1].source) and rows[0].conversation and rows[2].conversation
    result = convert_file(path, tmp_path / "out.jsonl")
    assert (result.rows_written, [r.source.row for r in result.skipped]) == (2, [2])
    cleaned = clean_file(path, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig())
    assert (cleaned.kept, cleaned.rejected) == (2, 1)


def test_a_recursion_bomb_in_a_json_file_is_a_clear_error(tmp_path: Path):
    path = make(tmp_path, "a.json", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DataError, match="nested deeper"):
        read_rows(path)


def test_parquet_columns_json_cannot_hold_are_kept_json_safe_and_said_so(tmp_path: Path):
    import base64
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunesmith.config import DataConfig
    from tunesmith.data.clean import clean_file

    when = datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.timezone.utc)
    table = pa.table(
        {
            "prompt": ["2+2?", "3+3?"],
            "completion": ["4", "6"],
            "created": pa.array([when, when], pa.timestamp("us", tz="UTC")),
            "price": pa.array([decimal.Decimal("1.10"), decimal.Decimal("2.25")], pa.decimal128(6, 2)),
            "blob": pa.array([b"\x00\xffraw", b"\x01"], pa.binary()),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    result = convert_file(path, tmp_path / "out.jsonl")  # crashed: "Object of type datetime is not JSON serializable"
    assert result.rows_written == 2 and result.failed == 0
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first["created"] == "2024-05-17T12:30:00+00:00" and first["price"] == "1.10"
    assert base64.b64decode(first["blob"]) == b"\x00\xffraw"
    summary = result.summary()
    assert "column `created` kept as ISO 8601 strings in 2 rows" in summary and "base64" in summary
    # Rejects hold the raw record (bytes included) too: it crashed writing them.
    cleaned = clean_file(
        path, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig(), drop=["no_system_message"]
    )
    assert cleaned.rejected == 2 and json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["row"]["blob"]
    assert any("decimal strings" in note for note in cleaned.notes)


def test_rejects_keep_the_exact_bytes_of_a_line_that_is_not_utf8(tmp_path: Path):
    import base64

    from tunesmith.config import DataConfig
    from tunesmith.data.clean import clean_file

    latin1 = '{"messages": [{"role": "user", "content": "café"}, {"role": "assistant", "content": "oui"}]}'.encode(
        "latin-1"
    )
    path = make(tmp_path, "a.jsonl", GOOD_LINE + b"\n" + latin1 + b"\n")
    clean_file(path, tmp_path / "c.jsonl", tmp_path / "r.jsonl", config=DataConfig())
    (reject,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "\ufffd" in reject["row"]  # readable, but lossy...
    assert base64.b64decode(reject["row_base64"]) == latin1  # ...and the original, byte for byte
