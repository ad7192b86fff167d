"""Reading example files and converting their rows to and from OpenAI `messages` form.

Two jobs, kept apart:
- `read_records` turns a file (JSONL, JSON, CSV, Parquet) into `Row`s that carry the parsed value
  and its `Source`. A line that is not JSON (or not UTF-8) is a row with an `invalid_json` finding,
  not a crash, so `data clean` can put it in the rejects file. Only a file that cannot be read at
  all raises `DataError` (exit code 2).
- `to_messages` / `to_format` convert one record between a source format (alpaca, sharegpt,
  prompt-completion) and a messages record. They know nothing of files; `validate.read_rows`
  chains the two and checks the result, and `convert.convert_file` writes whole files.

Conversions, and the few places where a round trip is not exact:
- alpaca: system → system message; each `history` pair → user + assistant; instruction and input
  → one user message joined by a blank line; output → assistant. Back, the user text is split at
  its first blank line, so an instruction that itself holds a blank line comes back split
  differently (the messages it converts to are still identical).
- sharegpt: human/user → user, gpt/assistant → assistant, system → system (a top-level `system`
  field → a leading system message), function_call → assistant `tool_calls` (ids call00000,
  call00001, ...), observation → tool message answering the pending call. `tools` (a JSON string
  or a list of function schemas, LLaMA-Factory style) → the OpenAI tools list. Back, speakers are
  written as human/gpt, a leading system message as the `system` field, `tools` as a JSON string.
- prompt-completion: `prompt` + `completion` strings (or `question` + `answer`) → user +
  assistant; TRL's conversational form (both lists of messages) is read too. Back, a plain
  user/assistant pair is written as strings and anything longer in the conversational form.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from collections import deque
from pathlib import Path
from typing import Any

from tunesmith.data.schema import Conversation, DataError, Finding, Row, Severity, Source

FORMATS = ("messages", "alpaca", "sharegpt", "prompt-completion")
# What `--format` accepts: `csv` means "a CSV file whose columns map to alpaca or
# prompt-completion" and is resolved to one of those by the column names.
FORMAT_CHOICES = ("auto", *FORMATS, "csv")
_SUFFIX_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 8192  # enough to see a binary file's NULs or a format's first record
# A JSONL line longer than this is a `line_too_long` finding, read past without holding it: a
# parsed row costs ~40x its bytes downstream (a 50 MB line took 2 GB), and 8 MiB is already ~2M
# tokens, more than any model's context.
MAX_LINE_BYTES = 8 << 20
MAX_JSON_DEPTH = 200  # nesting deeper than this is no conversation (Python's JSON reader stops near 1,000)
_BRACKETS_BEFORE_DEPTH_CHECK = 500  # count brackets first (fast, in C); scan for depth only above this
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets
_RAW_HEAD_CHARS = 1000  # what a rejects file keeps of a line too long to keep
_DETECT_SAMPLE = 50  # records looked at to detect the format; more only costs time
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape in JSON text
_LONE_SURROGATE = "holds a \\uD800-\\uDFFF escape without its pair (a broken emoji?): not valid Unicode"
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a non-UTF-8 byte
_FORMAT_HELP = (
    "messages (`messages`), sharegpt (`conversations` of from/value), "
    "alpaca (`instruction` + `output`, optional `input`/`system`/`history`), "
    "prompt-completion (`prompt` + `completion`, or `question` + `answer`)"
)

# ShareGPT speaker → OpenAI role. function_call and observation are handled apart (tool calls).
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_SHAREGPT_SPEAKERS = (*_SHAREGPT_ROLES, "function_call", "observation")


class Unconvertible(ValueError):
    """One record cannot be converted; becomes an `unconvertible` finding on its row."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------------------
# Reading files


def read_records(path: str | Path) -> tuple[str, list[Row]]:
    """Read every record of a file. Returns the file kind (jsonl, json, csv, parquet) and one
    `Row` per record, in order; rows that could not be parsed carry an `invalid_json` (or, for a
    CSV row with the wrong number of fields, `unconvertible`) finding and their text as `raw`."""
    path = Path(path)
    head = _head(path)
    kind = _SUFFIX_KINDS.get(path.suffix.lower()) or ("parquet" if head.startswith(b"PAR1") else None)
    if kind != "parquet":
        _check_text(head, path)
    kind = kind or _sniff(head, path)
    if kind == "jsonl" and _pretty_json_array(head):
        kind = "json"  # a pretty-printed JSON array saved as .jsonl: read it as the array it is
    if kind == "json":
        try:
            rows = _read_json(path)
        except _JsonLines:
            kind, rows = "jsonl", _read_jsonl(path)
    else:
        rows = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
    if not rows:
        raise DataError(path, "the file holds no examples (only blank lines or a header)")
    return kind, rows


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise DataError(path, "no such file; check the path") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory; pass the data file inside it") from None
    except PermissionError:
        raise DataError(path, "permission denied") from None
    if not head:
        raise DataError(path, "the file is empty")
    return head


def _check_text(head: bytes, path: Path) -> None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(path, "the file is UTF-16 encoded; save it as UTF-8")
    if head.startswith(b"\x1f\x8b"):
        raise DataError(path, "the file is gzip-compressed; decompress it first")
    if b"\x00" in head:
        raise DataError(path, "binary file (NUL bytes): expected JSONL, JSON, CSV text or Parquet")


def _pretty_json_array(head: bytes) -> bool:
    """Does a .jsonl file start with a JSON array spread over lines (`[` alone, or `[{` on line 1)?"""
    text = head.removeprefix(_BOM).lstrip()
    if not text.startswith(b"["):
        return False
    try:
        json.loads(text.split(b"\n", 1)[0])  # a whole array on line 1 is a (bad) JSONL row, left as one
        return False
    except ValueError:
        return True


def _sniff(head: bytes, path: Path) -> str:
    """The kind of a text file whose extension says nothing."""
    text = head.removeprefix(_BOM).lstrip()
    if text.startswith(b"{"):
        try:  # a first line that is a whole JSON value means one record per line
            json.loads(text.split(b"\n", 1)[0])
            return "jsonl"
        except ValueError:
            return "json"
    if text.startswith(b"["):
        return "json"
    raise DataError(
        path,
        f"cannot tell the file type from the extension {path.suffix or '(none)'!r} or the contents; "
        "use .jsonl, .json, .csv or .parquet",
    )


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    # Line by line in binary: only one line's text is held at a time, a line that is not UTF-8
    # becomes a finding instead of stopping the read, and a line over MAX_LINE_BYTES is skipped
    # in chunks, never held whole.
    with path.open("rb") as f:
        lineno = 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                head, size = line[:_RAW_HEAD_CHARS], len(line)
                del line  # not held while the rest of the line is skipped
                rows.append(_too_long(head, size + _skip_line(f), Source(str(path), lineno)))
                continue
            if not line or line.isspace():  # isspace: no copy of a huge line
                continue
            rows.append(_parse_line(line, Source(str(path), lineno)))
    return rows


def _skip_line(f: Any) -> int:
    """Read to the end of the current line in bounded chunks; the bytes skipped."""
    skipped = 0
    while chunk := f.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _too_long(head: bytes, size: int, source: Source) -> Row:
    message = (
        f"the line is {size / 2**20:.1f} MiB, over the {MAX_LINE_BYTES >> 20} MiB tunesmith reads per row "
        "(~2M tokens, more than any context); split or shorten it. The rejects file keeps its start only"
    )
    text = head.decode("utf-8", errors="replace") + f"… [{size} bytes, cut]"
    return Row(source, text, findings=[Finding("line_too_long", source, message)])


def _parse_line(line: bytes, source: Source) -> Row:
    raw_base64 = None
    try:
        text = line.decode("utf-8")
        value = json.loads(text)
        if _SURROGATE_ESCAPE.search(text) and not _encodable(value):
            message = _LONE_SURROGATE
        elif (depth := _too_deep(line)) is not None:
            message = _deep_message(depth)
        else:
            return Row(source, value)
    except UnicodeDecodeError as e:
        message = f"not valid UTF-8: byte 0x{line[e.start]:02x} at column {e.start + 1}; re-save the file as UTF-8"
        raw_base64 = base64.b64encode(line.rstrip(b"\r\n")).decode("ascii")  # the exact bytes, recoverable
    except json.JSONDecodeError as e:
        message = f"not valid JSON: {e.msg} (column {e.colno})"
    except RecursionError:  # nested deeper than the parser's stack: the row, not the read, fails
        message = _deep_message(_too_deep(line, always=True))
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    return Row(source, text, findings=[Finding("invalid_json", source, message)], raw_base64=raw_base64)


def _deep_message(depth: int | None) -> str:
    deep = f"{depth:,} levels" if depth else "too many levels"
    return f"nested {deep} deep (arrays/objects inside each other); tunesmith reads at most {MAX_JSON_DEPTH}"


def _too_deep(line: bytes, always: bool = False) -> int | None:
    """The nesting depth of a JSON line when it exceeds MAX_JSON_DEPTH, else None. Rows that parse
    but nest ~1,000 deep would crash later, when written or hashed, so they are stopped here. Only
    lines with many brackets are scanned: the count is a fast C loop, the scan is not."""
    if not always and line.count(b"[") + line.count(b"{") <= _BRACKETS_BEFORE_DEPTH_CHECK:
        return None
    depth = deepest = 0
    for token in _JSON_TOKENS.finditer(line):
        c = token.group()
        if c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest if deepest > MAX_JSON_DEPTH or always else None


def _encodable(value: Any) -> bool:
    """False when a string holds a lone surrogate (`"\\ud83d"` without its pair): JSON parses it,
    but no UTF-8 file can hold it, so writing the row out later would crash."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _JsonLines(Exception):
    """A .json file that holds one JSON value per line."""


def _read_json(path: Path) -> list[Row]:
    data = path.read_bytes().removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            path, f"not valid UTF-8 (byte 0x{data[e.start]:02x}); re-save the file as UTF-8", row=line
        ) from None
    del data
    if not text.strip():
        raise DataError(path, "the file holds only whitespace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            raise _JsonLines from None
        raise DataError(path, f"not valid JSON: {e.msg} (column {e.colno})", row=e.lineno) from None
    except RecursionError:
        raise DataError(path, f"nested deeper than JSON can be read; {_deep_message(None)}") from None
    records = value if isinstance(value, list) else _records_in_object(value, path)
    check = _SURROGATE_ESCAPE.search(text) is not None  # rare: pay for the check only then
    rows = []
    for i, record in enumerate(records, 1):
        source = Source(str(path), i)
        if check and not _encodable(record):
            # raw is the record's ASCII-escaped text, which any file can hold.
            rows.append(Row(source, json.dumps(record), findings=[Finding("invalid_json", source, _LONE_SURROGATE)]))
        else:
            rows.append(Row(source, record))
    return rows


def _records_in_object(value: Any, path: Path) -> list[Any]:
    if not isinstance(value, dict):
        raise DataError(path, "holds a single JSON value, not an array of examples (or an object holding one)")
    if _matching_formats(value):
        return [value]  # the whole file is one example
    lists = [key for key, item in value.items() if isinstance(item, list)]
    if len(lists) != 1:
        raise DataError(
            path,
            f"a JSON object with {len(lists)} list fields {lists}; expected an array of examples "
            'or an object holding exactly one list of them, e.g. {"data": [...]}',
        )
    return value[lists[0]]


def _read_csv(path: Path) -> list[Row]:
    # One field may hold a long answer; the default limit (128 KiB) would reject it.
    csv.field_size_limit(2**31 - 1)
    rows: list[Row] = []
    # surrogateescape: a non-UTF-8 byte spoils its row, not the whole read.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next((cells for cells in reader if _nonblank(cells)), None)
            if header is None:
                return rows
            _check_header(header, path, reader.line_num)
            end = reader.line_num
            for cells in reader:
                # A quoted field may span lines; the row's line is the first one.
                source, end = Source(str(path), end + 1), reader.line_num
                if _nonblank(cells):
                    rows.append(_csv_row(cells, header, source))
        except csv.Error as e:
            raise DataError(path, f"not valid CSV: {e}", row=reader.line_num) from None
    return rows


def _nonblank(cells: list[str]) -> bool:
    return bool(cells) and not (len(cells) == 1 and not cells[0].strip())


def _check_header(header: list[str], path: Path, line: int) -> None:
    if any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise DataError(path, f"the CSV header {header} has empty or repeated column names", row=line)


def _csv_row(cells: list[str], header: list[str], source: Source) -> Row:
    if any(_ESCAPED_BYTE.search(cell) for cell in cells):
        text = ",".join(c.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for c in cells)
        return Row(
            source, text, findings=[Finding("invalid_json", source, "not valid UTF-8; re-save the file as UTF-8")]
        )
    if len(cells) != len(header):
        message = f"has {len(cells)} fields but the header has {len(header)}; quote fields that contain commas"
        return Row(source, ",".join(cells), findings=[Finding("unconvertible", source, message)])
    return Row(source, dict(zip(header, cells)))


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow as pa  # imported here: ~0.3 s, paid only by Parquet users
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        # Columns JSON cannot hold (timestamps, decimals, bytes, ...) are turned into strings, so
        # convert and clean can write them; each converted value is an INFO finding saying so.
        unsafe = {f.name: str(f.type) for f in parquet.schema_arrow if _NOT_JSON_TYPES.search(str(f.type))}
        rows, n = [], 0
        for batch in parquet.iter_batches():  # one batch at a time: the Arrow copy stays small
            for record in batch.to_pylist():
                n += 1
                row = Row(Source(str(path), n), record)
                for name, kind in unsafe.items():
                    if record.get(name) is not None:
                        record[name], how = _json_safe(record[name])
                        row.findings.append(
                            Finding("json_safe_value", row.source, f"{kind} column `{name}` kept as {how}", name)
                        )
                rows.append(row)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable Parquet file: {e}") from None
    return rows


_NOT_JSON_TYPES = re.compile(r"timestamp|date|time|decimal|binary|duration|interval")


def _json_safe(value: Any) -> tuple[Any, str]:
    """A Parquet value as JSON can hold it, and how it was written (for the finding)."""
    import datetime
    import decimal

    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat(), "ISO 8601 strings"
    if isinstance(value, datetime.timedelta):
        return value.total_seconds(), "seconds"
    if isinstance(value, decimal.Decimal):
        return str(value), "decimal strings (exact; no float rounding)"
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii"), "base64 strings"
    if isinstance(value, dict):
        items = {k: _json_safe(v) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, "JSON-safe values (ISO dates, decimal strings, base64)"
    if isinstance(value, list | tuple):
        return [_json_safe(v)[0] for v in value], "JSON-safe values (ISO dates, decimal strings, base64)"
    return value, "is"


# ---------------------------------------------------------------------------------------------
# Detecting the format


def _matching_formats(record: Any) -> list[str]:
    if not isinstance(record, dict):
        return []
    found = []
    if "messages" in record:
        found.append("messages")
    if "conversations" in record:
        found.append("sharegpt")
    if "instruction" in record and "output" in record:
        found.append("alpaca")
    if ("prompt" in record and "completion" in record) or ("question" in record and "answer" in record):
        found.append("prompt-completion")
    return found


def detect_format(rows: list[Row], path: str | Path) -> str:
    """The format of a file's rows, judged from the first records that parsed. Raises DataError
    when no record matches a format or the records disagree."""

    def readable(row: Row) -> bool:  # INFO findings from reading (a Parquet date made a string) are no obstacle
        return not any(f.severity is Severity.ERROR for f in row.findings)

    parsed = [r for r in rows if isinstance(r.raw, dict) and readable(r)][:_DETECT_SAMPLE]
    if not parsed:
        bad = next((r for r in rows if not readable(r)), None)
        first_problem = f" (line {bad.source.row}: {bad.findings[0].message})" if bad else ""
        raise DataError(path, f"no row is a JSON object{first_problem}; expected one example object per row")
    votes: dict[str, list[int]] = {}
    keys: set[str] = set()
    ambiguous: list[str] = []
    for row in parsed:
        keys.update(row.raw)
        found = _matching_formats(row.raw)
        if len(found) == 1:
            votes.setdefault(found[0], []).append(row.source.row)
        elif found:
            ambiguous = found
    if len(votes) == 1:
        return next(iter(votes))
    if votes:
        seen = "; ".join(f"{fmt} (rows {', '.join(map(str, lines[:5]))})" for fmt, lines in votes.items())
        raise DataError(path, f"rows look like different formats: {seen}; make them agree or pass --format")
    if ambiguous:
        raise DataError(path, f"rows match several formats ({', '.join(ambiguous)}); pass --format")
    raise DataError(
        path,
        f"cannot tell the example format from the keys {sorted(keys)}; "
        f"accepted: {_FORMAT_HELP}; rename the fields or pass --format",
    )


def resolve_format(fmt: str, kind: str, rows: list[Row], path: str | Path) -> str:
    """Turn a `--format` choice into one of FORMATS for this file."""
    if fmt not in FORMAT_CHOICES:
        raise DataError(path, f"unknown format {fmt!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    if fmt == "csv" and kind != "csv":
        raise DataError(path, f"--format csv needs a CSV file; this file reads as {kind}")
    return detect_format(rows, path) if fmt in ("auto", "csv") else fmt


# ---------------------------------------------------------------------------------------------
# Source format → messages


def to_messages(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Convert one record (a JSON object) of `fmt` into a messages record: `messages`, optional
    `tools`, and every other field unchanged. Raises Unconvertible naming the field at fault."""
    if fmt == "messages":
        return record
    if fmt == "alpaca":
        return _from_alpaca(record)
    if fmt == "sharegpt":
        return _from_sharegpt(record)
    if fmt == "prompt-completion":
        return _from_prompt_completion(record)
    raise ValueError(f"unknown format {fmt!r}")


def _text(record: dict[str, Any], key: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if value is None:
        raise Unconvertible(f"no `{key}` field (keys: {', '.join(record)})", key)
    if not isinstance(value, str):
        raise Unconvertible(f"`{key}` is a {type(value).__name__}, expected a string", key)
    return value


def _rest(record: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used}


def _from_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    instruction, extra = _text(record, "instruction"), _text(record, "input", optional=True)
    output, system = _text(record, "output"), _text(record, "system", optional=True)
    history = record.get("history") or []
    if not isinstance(history, list):
        raise Unconvertible("`history` must be a list of [instruction, response] pairs", "history")
    messages = [{"role": "system", "content": system}] if system else []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise Unconvertible("expected an [instruction, response] pair of strings", f"history[{i}]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {**_rest(record, ("instruction", "input", "output", "system", "history")), "messages": messages}


def _from_prompt_completion(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("prompt", "completion") if "prompt" in record else ("question", "answer")
    prompt, completion = record.get(keys[0]), record.get(keys[1])
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational form
        messages = prompt + completion
    else:
        messages = [
            {"role": "user", "content": _text(record, keys[0])},
            {"role": "assistant", "content": _text(record, keys[1])},
        ]
    return {**_rest(record, keys), "messages": messages}


def _from_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise Unconvertible(f"`conversations` is a {type(turns).__name__}, expected a list of turns", "conversations")
    system = _text(record, "system", optional=True)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    pending: deque[str] = deque()  # ids of tool calls still waiting for their observation
    n_calls = 0
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise Unconvertible("a turn is not a JSON object", where)
        if set(turn) - {"from", "value"}:
            raise Unconvertible(
                f"unexpected keys {sorted(set(turn) - {'from', 'value'})}; a turn has `from` and `value`", where
            )
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in _SHAREGPT_SPEAKERS:
            raise Unconvertible(
                f"unknown speaker {speaker!r}; expected one of {', '.join(_SHAREGPT_SPEAKERS)}", f"{where}.from"
            )
        if not isinstance(value, str):
            raise Unconvertible(f"`value` is a {type(value).__name__}, expected a string", f"{where}.value")
        if speaker == "function_call":
            calls = []
            for call in _parse_calls(value, f"{where}.value"):
                pending.append(_call_id(n_calls))
                n_calls += 1
                calls.append({"id": pending[-1], "type": "function", "function": call})
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif speaker == "observation":
            if not pending:
                raise Unconvertible("an observation with no function_call before it", f"{where}.from")
            messages.append({"role": "tool", "content": value, "tool_call_id": pending.popleft()})
        else:
            pending.clear()
            messages.append({"role": _SHAREGPT_ROLES[speaker], "content": value})
    out = {**_rest(record, ("conversations", "system", "tools")), "messages": messages}
    if record.get("tools") is not None:
        out["tools"] = _parse_tools(record["tools"])
    return out


def _call_id(n: int) -> str:
    # Nine letters and digits: Mistral's template rejects any other tool-call id.
    return f"call{n:05d}"


def _parse_calls(value: str, where: str) -> list[dict[str, Any]]:
    """A function_call turn: `{"name": ..., "arguments": {...}}`, or a list of them."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise Unconvertible(f"function_call is not valid JSON: {e.msg}", where) from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise Unconvertible('a function_call must be {"name": ..., "arguments": {...}}', where)
        arguments = call.get("arguments", {})
        # OpenAI carries arguments as a JSON string; ensure_ascii=False keeps the text as written.
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        out.append({"name": call["name"], "arguments": arguments})
    return out


def _parse_tools(tools: Any) -> list[dict[str, Any]]:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as e:
            raise Unconvertible(f"`tools` is not valid JSON: {e.msg}", "tools") from None
    if not isinstance(tools, list):
        raise Unconvertible("`tools` must be a list of function schemas", "tools")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            out.append(tool)  # already in OpenAI form
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})
        else:
            raise Unconvertible("a tool must be a function schema with a `name`", f"tools[{i}]")
    return out


# ---------------------------------------------------------------------------------------------
# Messages → source format


def to_format(conversation: Conversation, fmt: str) -> dict[str, Any]:
    """Write a conversation back as a record of `fmt`. Raises ValueError when the conversation
    cannot be expressed there (e.g. tool calls in alpaca)."""
    if fmt == "messages":
        return conversation.to_json()
    writers = {"alpaca": _to_alpaca, "sharegpt": _to_sharegpt, "prompt-completion": _to_prompt_completion}
    if fmt not in writers:
        raise ValueError(f"cannot write format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = writers[fmt](conversation)
    if conversation.id is not None:
        out["id"] = conversation.id
    out.update(conversation.metadata)
    return out


def _split_system(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    if messages and messages[0].get("role") == "system":
        return messages[0]["content"], messages[1:]
    return "", messages


def _plain_turns(conversation: Conversation, fmt: str) -> tuple[str, list[tuple[str, str]]]:
    """System text and (user, assistant) pairs, or ValueError if the conversation has another shape."""
    system, rest = _split_system(conversation.messages)
    roles = [m.get("role") for m in rest]
    if (
        conversation.tools
        or any(m.get("tool_calls") for m in rest)
        or roles != ["user", "assistant"] * (len(rest) // 2)
        or not rest
    ):
        raise ValueError(
            f"{conversation.source}: {fmt} holds alternating user/assistant turns without tools; this conversation has {roles}"
        )
    return system, [(rest[i]["content"], rest[i + 1]["content"]) for i in range(0, len(rest), 2)]


def _to_alpaca(conversation: Conversation) -> dict[str, Any]:
    system, pairs = _plain_turns(conversation, "alpaca")
    *history, (user, output) = pairs
    head, _, tail = user.partition("\n\n")
    instruction, extra = (head, tail) if tail else (user, "")
    out: dict[str, Any] = {"instruction": instruction, "input": extra, "output": output}
    if system:
        out["system"] = system
    if history:
        out["history"] = [list(pair) for pair in history]
    return out


def _to_prompt_completion(conversation: Conversation) -> dict[str, Any]:
    messages = conversation.messages
    if (
        [m.get("role") for m in messages] == ["user", "assistant"]
        and not conversation.tools
        and not messages[1].get("tool_calls")
    ):
        out: dict[str, Any] = {"prompt": messages[0]["content"], "completion": messages[1]["content"]}
    else:
        out = {"prompt": messages[:-1], "completion": messages[-1:]}
    if conversation.tools is not None:
        out["tools"] = conversation.tools
    return out


def _to_sharegpt(conversation: Conversation) -> dict[str, Any]:
    system, rest = _split_system(conversation.messages)
    speakers = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    turns = []
    for m in rest:
        if m.get("tool_calls"):
            if m.get("content"):
                raise ValueError(f"{conversation.source}: sharegpt cannot hold text and tool calls in one turn")
            calls = [_call_to_sharegpt(c["function"]) for c in m["tool_calls"]]
            turns.append(
                {
                    "from": "function_call",
                    "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
                }
            )
        else:
            turns.append({"from": speakers[m["role"]], "value": m["content"]})
    out: dict[str, Any] = {"conversations": turns}
    if system:
        out["system"] = system
    if conversation.tools is not None:
        functions = [t["function"] if t.get("type") == "function" else t for t in conversation.tools]
        out["tools"] = json.dumps(functions, ensure_ascii=False)
    return out


def _call_to_sharegpt(function: dict[str, Any]) -> dict[str, Any]:
    try:
        arguments = json.loads(function["arguments"])
    except (TypeError, json.JSONDecodeError):
        arguments = function["arguments"]
    return {"name": function["name"], "arguments": arguments}
