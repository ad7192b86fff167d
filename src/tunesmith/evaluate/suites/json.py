"""`json`: does the output parse, validate against the schema, and hold the reference's values?

Parsing is tolerant the way a consumer that extracts JSON from model text would be: a fenced
```json block, or the first JSON object/array in the text. Text around the JSON is reported
(`trailing_prose`), because a strict consumer (`json.loads` on the whole answer) would fail on it.
The schema (`eval.json_schema`, a JSON Schema file) is checked with the `jsonschema` library, with
the validator its `$schema` names (Draft 2020-12 when it names none).

`field_accuracy`: of the reference's leaf values (flattened to paths such as `items[0].name`),
the share the prediction has at the same path with an equal value (1 == 1.0), averaged over rows
whose reference parses.

Summary keys: `n`, `parse_rate`, `schema_valid_rate` (None without a schema), `field_accuracy`
(None when no reference parses), plus `trailing_prose` (count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tunesmith.config import EvalConfig
from tunesmith.evaluate.suites import ScoreRow, register

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def parse_json(text: str) -> tuple[Any, bool, str | None]:
    """(value, parsed, note). `note` says what had to be stripped: 'fenced', 'trailing_prose'."""
    text = (text or "").strip()
    try:
        return json.loads(text), True, None
    except json.JSONDecodeError:
        pass
    fence = _FENCE.search(text)
    if fence:
        try:
            value = json.loads(fence.group(1))
        except json.JSONDecodeError:
            pass
        else:
            outside = (text[: fence.start()] + text[fence.end() :]).strip()
            return value, True, "trailing_prose" if outside else "fenced"
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value, True, "trailing_prose" if (text[: match.start()] + text[end:]).strip() else None
    return None, False, None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by path: {"a": {"b": [1]}} -> {"a.b[0]": 1}. Empty containers are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def load_schema(path: str | Path) -> Any:
    """A validator for the JSON Schema file at `path` (the schema itself is checked first)."""
    from jsonschema.validators import validator_for

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such JSON Schema file (eval.json_schema / --schema)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@register
class JsonSuite:
    name: ClassVar[str] = "json"

    def __init__(self, config: EvalConfig):
        self.validator = load_schema(config.json_schema) if config.json_schema else None

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]:
        return [self._score_one(row) for row in rows]

    def _score_one(self, row: ScoreRow) -> dict[str, Any]:
        value, parsed, note = parse_json(row.prediction)
        out: dict[str, Any] = {"parsed": parsed, "note": note, "schema_valid": None, "schema_errors": []}
        if parsed and self.validator is not None:
            errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
            out["schema_valid"] = not errors
            out["schema_errors"] = [f"{e.json_path}: {e.message}" for e in errors[:5]]
        elif self.validator is not None:
            out["schema_valid"] = False
        out["field_accuracy"] = None
        if row.reference is not None:
            expected, ok, _ = parse_json(row.reference)
            if ok:
                leaves = flatten(expected)
                got = flatten(value) if parsed else {}
                hits = sum(path in got and _same(got[path], v) for path, v in leaves.items())
                out["field_accuracy"] = hits / len(leaves) if leaves else 1.0
        return out

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        validated = [s["schema_valid"] for s in scores if s["schema_valid"] is not None]
        fields = [s["field_accuracy"] for s in scores if s["field_accuracy"] is not None]
        return {
            "n": n,
            "parse_rate": sum(s["parsed"] for s in scores) / n if n else None,
            "schema_valid_rate": sum(validated) / n if n and self.validator is not None else None,
            "field_accuracy": sum(fields) / len(fields) if fields else None,
            "trailing_prose": sum(s["note"] == "trailing_prose" for s in scores),
        }
