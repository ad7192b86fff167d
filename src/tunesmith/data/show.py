"""`data show`: one conversation exactly as the model sees it, with the trained tokens marked.

Three forms of the same view: a list of TokenView (for code), a Rich rendering (trained spans
highlighted on a colour terminal, «between guillemets» anywhere else, e.g. piped to a file), and JSON
(`{"tokens": [{"id", "text", "trained"}, ...]}`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from tunesmith.data.schema import Conversation, DataError
from tunesmith.data.template import IGNORE_INDEX, TrainOn, encode_rendered, render, tokenize

OPEN, CLOSE = "«", "»"
_TRAINED_STYLE = "bold black on green"
_CONTEXT_STYLE = "dim"


@dataclass(frozen=True)
class TokenView:
    id: int
    text: str  # the characters of the rendered text this token stands for
    trained: bool


def token_view(
    conversation: Conversation | list[dict[str, Any]], tokenizer: Any, train_on: TrainOn = "all"
) -> list[TokenView]:
    """The tokens of one conversation, each with its text and whether it carries loss. The texts join
    back into exactly the rendered conversation (plus EOS when tunesmith appends it). Raises
    TemplateError, like `template.encode`."""
    if isinstance(conversation, Conversation):
        messages, tools = conversation.messages, conversation.tools
    else:
        messages, tools = conversation, None
    rendered = render(messages, tokenizer, tools=tools, train_on=train_on)
    encoded = encode_rendered(rendered, tokenizer)
    offsets = tokenize(tokenizer, [rendered.text])["offset_mapping"][0]
    # Each token shows the text from its start to the next token's start, so whitespace a token's
    # offsets leave out (SentencePiece's prefix space, a special token's swallowed newline) goes with
    # the token before it and nothing is lost or shown twice.
    starts = [0] + [s for s, _ in offsets[1:]] if offsets else []
    bounds = starts[1:] + [len(rendered.text)]
    views = [
        TokenView(int(i), rendered.text[s:e], lab != IGNORE_INDEX)
        for i, lab, s, e in zip(encoded.input_ids, encoded.labels, starts, bounds)
    ]
    if encoded.eos_appended:
        views.append(TokenView(encoded.input_ids[-1], tokenizer.eos_token, True))
    return views


def to_json(views: list[TokenView]) -> dict[str, Any]:
    return {"tokens": [asdict(v) for v in views]}


def from_json(obj: dict[str, Any]) -> list[TokenView]:
    return [TokenView(int(t["id"]), str(t["text"]), bool(t["trained"])) for t in obj["tokens"]]


def marked_text(views: list[TokenView]) -> str:
    """The rendered text with «» around every run of trained tokens."""
    out: list[str] = []
    inside = False
    for v in views:
        if v.trained != inside:
            out.append(OPEN if v.trained else CLOSE)
            inside = v.trained
        out.append(v.text)
    if inside:
        out.append(CLOSE)
    return "".join(out)


def summary(views: list[TokenView], tokenizer: Any) -> str:
    """Token counts and how the final answer ends: the thing a fine-tune most often gets wrong."""
    trained = [v for v in views if v.trained]
    head = f"{len(views)} tokens, {len(trained)} trained"
    if not trained:
        return f"{head}; nothing is trained in this conversation"
    last = trained[-1].id
    name = tokenizer.convert_ids_to_tokens(last)
    if last == tokenizer.eos_token_id:
        return f"{head}; the final answer ends with {name!r} (EOS)"
    if last in tokenizer.all_special_ids or last in tokenizer.added_tokens_decoder:
        return (
            f"{head}; the final answer ends with {name!r}, an end-of-turn token that is not EOS "
            f"({tokenizer.eos_token!r}): generation must stop on both"
        )
    return f"{head}; the final answer ends with no end-of-turn token ({name!r}): the model may not learn to stop"


def print_token_view(views: list[TokenView], tokenizer: Any, console: Console | None = None) -> None:
    """Print the view: trained tokens highlighted on a colour terminal, «between guillemets» when
    there is no colour (a pipe, a file, NO_COLOR), then the summary line."""
    console = console or Console()
    if console.no_color or console.color_system is None:
        body = Text(marked_text(views))
    else:
        body = Text()
        for v in views:
            body.append(v.text, style=_TRAINED_STYLE if v.trained else _CONTEXT_STYLE)
    console.print(body, soft_wrap=True)
    console.print(Text(summary(views, tokenizer)), soft_wrap=True)


def conversation_at(path: str | Path, index: int, fmt: str = "auto") -> Conversation:
    """The `index`-th row (0-based) of a file as a conversation; DataError if it has none."""
    from tunesmith.data.validate import read_rows

    _, rows = read_rows(path, fmt)
    if not 0 <= index < len(rows):
        raise DataError(path, f"--index {index} is out of range: the file has {len(rows)} rows (0 to {len(rows) - 1})")
    row = rows[index]
    if row.conversation is None:
        problems = "; ".join(f"{f.code}: {f.message}" for f in row.findings)
        raise DataError(path, f"row {index} cannot be shown: {problems}", row=row.source.row)
    return row.conversation
