"""The types every stage shares: a conversation in OpenAI `messages` form, where it came from,
and what is wrong with it.

Messages stay plain dicts (`{"role": ..., "content": ...}`) on purpose: that is what
`tokenizer.apply_chat_template` and the OpenAI file format take, and it keeps reading 100k
examples cheap. `Conversation` adds the provenance (file and row) that every report needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Keys a message may carry in the OpenAI fine-tuning format (plus `weight`, which OpenAI honours
# on assistant messages: weight 0 means "show it to the model, don't train on it").
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "weight", "function_call"})


class Severity(str, Enum):
    ERROR = "error"  # blocks training: `data check` exits 1
    WARNING = "warning"  # trains, but teaches the wrong thing: `data clean` removes most of these
    INFO = "info"  # worth knowing, nothing to fix


@dataclass(frozen=True)
class Code:
    """One kind of finding. The registry below is the single list of them."""

    name: str
    severity: Severity
    dropped_by_default: bool  # does `data clean` remove rows with it unless told otherwise?
    summary: str


_CODES = [
    # Format errors: the row cannot be read as a conversation at all.
    Code("invalid_json", Severity.ERROR, True, "not valid JSON"),
    Code("not_an_object", Severity.ERROR, True, "the row is not a JSON object"),
    Code("missing_messages", Severity.ERROR, True, "no `messages` list"),
    Code("message_not_object", Severity.ERROR, True, "a message is not a JSON object"),
    Code("missing_role", Severity.ERROR, True, "a message has no `role`"),
    Code("unknown_role", Severity.ERROR, True, "a message has a role other than system/user/assistant/tool"),
    Code("unknown_message_key", Severity.ERROR, True, "a message has a key the format does not define"),
    Code("missing_content", Severity.ERROR, True, "a message has no `content` (and no tool calls)"),
    Code("non_string_content", Severity.ERROR, True, "a message's content is not a string"),
    Code("no_assistant_message", Severity.ERROR, True, "nothing to learn: no assistant message"),
    Code("last_not_assistant", Severity.ERROR, True, "the conversation does not end with the assistant"),
    Code("consecutive_roles", Severity.ERROR, True, "two turns of the same role in a row the template cannot render"),
    Code("unconvertible", Severity.ERROR, True, "the row cannot be converted from its source format"),
    Code(
        "invalid_tool_call",
        Severity.ERROR,
        True,
        "tool_calls not in OpenAI's shape, or a tool message answering no call",
    ),
    Code("line_too_long", Severity.ERROR, True, "a line longer than tunesmith reads (formats.MAX_LINE_BYTES)"),
    Code(
        "json_safe_value",
        Severity.INFO,
        False,
        "a Parquet value JSON cannot hold (date, decimal, bytes) kept as a string",
    ),
    # Template findings (need a tokenizer).
    Code("template_error", Severity.ERROR, True, "the chat template rejects this conversation"),
    Code("template_drops_content", Severity.ERROR, True, "the rendered text lacks part of a message"),
    Code("double_bos", Severity.WARNING, False, "the template writes BOS and the tokenizer adds another"),
    Code("no_end_of_turn", Severity.WARNING, False, "an assistant turn is not followed by an end-of-turn token"),
    Code("stop_token_mismatch", Severity.WARNING, False, "turns end with a token that is not the tokenizer's EOS"),
    Code("pad_token", Severity.INFO, False, "the tokenizer has no pad token, or pad == eos"),
    Code("no_chat_template", Severity.INFO, False, "the tokenizer has no chat template; a default one is used"),
    # Quality gates.
    Code("exact_duplicate", Severity.WARNING, True, "same conversation as an earlier row (case/space-insensitive)"),
    Code("near_duplicate", Severity.WARNING, False, "nearly the same conversation as other rows"),
    Code("refusal", Severity.WARNING, True, "the answer is a refusal or an AI disclaimer"),
    Code("empty_answer", Severity.WARNING, True, "an assistant answer is empty"),
    Code("placeholder", Severity.WARNING, True, "unfilled placeholder such as {{name}} or [Your Name]"),
    Code("too_long", Severity.WARNING, False, "rendered tokens exceed max_seq_len"),
    Code("answer_truncated", Severity.ERROR, True, "the max_seq_len cut removes part or all of an answer"),
    Code("nothing_trained", Severity.ERROR, True, "no token carries loss: every answer has weight 0"),
    Code("no_user_message", Severity.WARNING, False, "no user message"),
    Code("no_system_message", Severity.INFO, False, "no system message"),
]
CODES: dict[str, Code] = {c.name: c for c in _CODES}
DEFAULT_DROP = frozenset(c.name for c in _CODES if c.dropped_by_default)


@dataclass(frozen=True)
class Source:
    """Where a row came from. `row` is 1-based: the line in a JSONL/CSV file, the position in a
    JSON array or Parquet table (the reports say which)."""

    path: str
    row: int

    def __str__(self) -> str:
        return f"{self.path}:{self.row}"


@dataclass
class Finding:
    code: str
    source: Source
    message: str
    field: str | None = None  # JSON path inside the row, e.g. "messages[2].content"
    group: int | None = None  # duplicate-group id, shared by every row of the group

    @property
    def severity(self) -> Severity:
        return CODES[self.code].severity

    def to_json(self) -> dict[str, Any]:
        out = {"code": self.code, "severity": self.severity.value, "line": self.source.row, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass
class Conversation:
    """One training example in OpenAI `messages` form, plus where it came from."""

    messages: list[dict[str, Any]]
    source: Source
    tools: list[dict[str, Any]] | None = None
    id: str | None = None
    # Fields of the input row that are not part of the format (kept, never trained on).
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The row as written to a messages JSONL file (metadata fields come back at top level)."""
        out: dict[str, Any] = {"messages": self.messages}
        if self.tools is not None:
            out["tools"] = self.tools
        if self.id is not None:
            out["id"] = self.id
        out.update(self.metadata)
        return out

    def assistant_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m.get("role") == "assistant"]


class DataError(Exception):
    """The input cannot be read at all (missing, empty, binary, unknown format): exit code 2."""

    def __init__(self, path: str | Path, message: str, row: int | None = None):
        self.path, self.row = str(path), row
        where = f"{path}:{row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class Row:
    """One input row on its way through the data stage. Every row read ends in exactly one of
    `data clean`'s two outputs, so the raw value is kept even when it cannot be parsed."""

    source: Source
    raw: Any  # the parsed JSON value, or the undecodable text for invalid rows
    conversation: Conversation | None = None  # None when the row has format errors
    findings: list[Finding] = field(default_factory=list)
    # The line's exact bytes, base64, when `raw` cannot hold them (not UTF-8): rejects keep the original.
    raw_base64: str | None = None

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}
