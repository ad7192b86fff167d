"""Chat templates and assistant-only loss masks, for any tokenizer's template.

TRL's `assistant_only_loss` needs `{% generation %}` markers, which most real templates lack. This
module needs none. For each conversation it:

1. renders the whole conversation once with the tokenizer's own template (`render`);
2. finds each assistant answer's characters in that text (`_locate_fast`, else `_locate_by_sentinels`);
3. tokenizes the text once with `add_special_tokens=False` and offsets: the template writes BOS
   itself, and HF's own `apply_chat_template(tokenize=True)` tokenizes the same way, so the ids are
   exactly the ones the model sees at inference;
4. trains the tokens that overlap the answers, plus the end-of-turn token after each (`label`), so the
   model learns to stop. If the template writes no end-of-turn after the final answer, EOS is
   appended and trained ("guarantee the EOS token").

Trained: every assistant message's content (or, for tool calls, the rendered call) and its
terminator; never system/user/tool text or the assistant header. `train_on="last"` trains only the
final assistant message; a message with `weight: 0` (OpenAI) is shown to the model but not trained.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from tunesmith.data.schema import CODES, Conversation

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips
TrainOn = Literal["all", "last"]

# For tokenizers without a chat template (base models): plain-text role headers, and EOS after every
# assistant turn so the model learns to stop. BOS is written by the template, as real templates do,
# because tunesmith tokenizes rendered text with add_special_tokens=False.
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- if tools -%}{{- '### Tools:\\n' + tools | tojson + '\\n\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '### ' + message['role'] | capitalize + ':\\n' -}}"
    "{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message['tool_calls'] -%}{{- message['tool_calls'] | tojson -}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token if eos_token else '' -}}{%- endif -%}"
    "{{- '\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Assistant:\\n' -}}{%- endif -%}"
)
# Whitespace tokens allowed between an answer and its end-of-turn token (they are trained with it).
_MAX_GAP_TOKENS = 4
_START, _END = itemgetter(0), itemgetter(1)
_SENTINEL = "@@tunesmith-answer-{}@@"  # ASCII, so no template filter (tojson, trim) changes it


class TemplateError(Exception):
    """One conversation cannot be rendered or masked. `code` is a finding code from schema.CODES."""

    def __init__(self, code: str, message: str, field: str | None = None):
        if code not in CODES:
            raise ValueError(f"unknown finding code {code!r}")
        self.code, self.message, self.field = code, message, field
        super().__init__(f"{field}: {message}" if field else message)


@dataclass
class Rendered:
    """A conversation rendered by its chat template, with the characters to train."""

    text: str
    spans: list[tuple[int, int]]  # [start, end) character spans of trained answers, in order
    ends_with_answer: bool  # the last span is the conversation's last message: EOS may go after it


@dataclass(frozen=True)
class Cut:
    """What fitting an example to `max_len` removed from its right end."""

    tokens: int  # tokens removed (0: the example fits)
    trained: int  # of those, trained (answer) tokens: more than 0 means the cut hits an answer


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on trained tokens
    attention_mask: list[int]
    n_trained: int
    eos_appended: bool = False  # the template wrote no end-of-turn after the final answer
    # Per trained span, the end-of-turn token id trained after it (None: the template wrote none).
    terminators: tuple[int | None, ...] = ()

    def fit(self, max_len: int) -> tuple[Encoded, Cut]:
        """This example cut on the right to at most `max_len` tokens, and what the cut removed.
        The one rule `data check` reports and training applies (tunesmith.data.prepare): a cut that
        removes only untrained tokens is harmless; one with `cut.trained > 0` would teach the model
        to start an answer and never finish it, so such an example is dropped, never trained."""
        if len(self.input_ids) <= max_len:
            return self, Cut(0, 0)
        removed = self.labels[max_len:]
        trained = len(removed) - removed.count(IGNORE_INDEX)
        fitted = replace(
            self,
            input_ids=self.input_ids[:max_len],
            labels=self.labels[:max_len],
            attention_mask=self.attention_mask[:max_len],
            n_trained=self.n_trained - trained,
        )
        return fitted, Cut(len(removed), trained)


@dataclass(frozen=True)
class _Specials:
    """What `label` needs to know about a tokenizer, computed once per batch."""

    ids: frozenset[int]  # special tokens: the candidates for end-of-turn
    bos_id: int | None
    eos_id: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> _Specials:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer: tunesmith needs character offsets to "
                "find the assistant tokens (save it with a tokenizer.json, or load it with use_fast=True)"
            )
        special = set(tokenizer.all_special_ids)
        special |= {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
        return cls(frozenset(special), tokenizer.bos_token_id, tokenizer.eos_token_id)


# --- loading ---------------------------------------------------------------------------------------


def read_chat_template(template: str | Path) -> str:
    """A Jinja template given inline, or the text of the file it names (e.g. a .jinja file)."""
    text = str(template)
    if "{{" in text or "{%" in text:
        return text
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(
            f"chat template {text!r}: no such file (give a Jinja template or a path to a .jinja file)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OSError(f"chat template {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def load_tokenizer(
    name_or_path: str | Path, *, chat_template: str | Path | None = None, trust_remote_code: bool = False
) -> Any:
    """AutoTokenizer for a hub id or a local directory; `chat_template` (text or path) replaces its
    own. A tokenizer without any template gets DEFAULT_CHAT_TEMPLATE, so a saved fine-tune carries the
    template it was trained with; `inspect_tokenizer` reports it as `no_chat_template`."""
    from transformers import AutoTokenizer

    from tunesmith.models.load import ModelLoadError, locate

    try:  # a hub id offline fails here, in a second, not after ~45 s of retries
        source, offline = locate(name_or_path)
    except ModelLoadError as e:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path!s}: {str(e).split(': ', 1)[-1]}") from None
    from tunesmith.models.builtin import resolve_name

    name_or_path = resolve_name(name_or_path)  # a built-in name (smollm2-135m-instruct) → its cached import
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=offline)
    except Exception as e:  # OSError, ValueError, KeyError...: transformers says "not a tokenizer" many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load a tokenizer from {name_or_path!s}: {first} (a local directory needs tokenizer.json "
            "or tokenizer.model with tokenizer_config.json; a hub id needs the network or a filled cache)"
        ) from e
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    try:
        _Specials.of(tokenizer)  # fail now, not on the first row, for a tokenizer without offsets
    except TypeError as e:
        from tunesmith.models.load import ModelLoadError

        raise ModelLoadError(f"tokenizer {name_or_path!s}: {e}") from None
    return tokenizer


# --- rendering and locating answers ----------------------------------------------------------------


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    template = None if tokenizer.chat_template else DEFAULT_CHAT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False)
    except Exception as e:  # the template is untrusted code: any failure is this row's problem
        raise TemplateError("template_error", f"the chat template rejects this conversation: {e}") from None


_ARGUMENTS_PROBE = {"city": "Oslo"}
_arguments_form: dict[str, bool] = {}  # chat template -> does it want tool-call arguments as a dict?


def _wants_dict_arguments(tokenizer: Any) -> bool:
    """OpenAI files give tool-call arguments as a JSON string; most HF templates expect a dict and
    `tojson` it (a string would come out double-encoded), while Mistral v3's template takes the string
    and HTML-escapes its JSON when given a dict. Render a probe call both ways, once per template,
    and keep the form that comes out as clean JSON (a dict when both do or neither does)."""
    key = str(tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE)
    if key not in _arguments_form:
        clean = json.dumps(_ARGUMENTS_PROBE)

        def renders_clean(arguments: Any) -> bool:
            call = {"id": "call00001", "type": "function", "function": {"name": "probe", "arguments": arguments}}
            messages = [{"role": "user", "content": "?"}, {"role": "assistant", "tool_calls": [call]}]
            try:
                text = _apply(tokenizer, messages, None)
            except TemplateError:
                return False
            return clean in text and "&#34;" not in text and '\\"' not in text

        _arguments_form[key] = renders_clean(_ARGUMENTS_PROBE) or not renders_clean(clean)
    return _arguments_form[key]


def _for_template(messages: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Messages with tool-call arguments in the form the template renders cleanly (see
    `_wants_dict_arguments`). Copies only the messages it changes; no cost without tool calls."""
    if not any(m.get("tool_calls") for m in messages):
        return messages
    as_dict = _wants_dict_arguments(tokenizer)
    out = list(messages)
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            out[i] = {**m, "tool_calls": [_call_arguments(c, as_dict) for c in m["tool_calls"]]}
    return out


def _call_arguments(call: Any, as_dict: bool) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return call
    args = fn.get("arguments")
    if as_dict and isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return call
        return {**call, "function": {**fn, "arguments": parsed}} if isinstance(parsed, dict) else call
    if not as_dict and isinstance(args, dict):
        return {**call, "function": {**fn, "arguments": json.dumps(args, ensure_ascii=False)}}
    return call


def trained_indices(messages: Sequence[dict[str, Any]], train_on: TrainOn) -> list[int]:
    """Indices of the messages that carry loss: the assistant ones (only the last with
    `train_on="last"`), except those with `weight: 0`."""
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last":
        assistant = assistant[-1:]
    elif train_on != "all":
        raise ValueError(f"train_on must be 'all' or 'last', not {train_on!r}")
    return [i for i in assistant if messages[i].get("weight", 1) != 0]


def _locate_fast(text: str, messages: list[dict[str, Any]]) -> dict[int, tuple[int, int]] | None:
    """Find every assistant answer in one pass, or None when any is ambiguous. An answer's stripped
    text (templates may `trim` it) that occurs exactly once after the previous answer can only be the
    answer itself. A short answer that a question also quotes ("Paris or Lyon?" / "Paris") is
    ambiguous and goes to `_locate_by_sentinels`, which costs one more render."""
    spans: dict[int, tuple[int, int]] = {}
    cursor = 0
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        content = m.get("content")
        if m.get("tool_calls") or not isinstance(content, str) or not content.strip():
            return None
        core = content.strip()
        start = text.find(core, cursor)
        if start < 0 or text.find(core, start + 1) >= 0:
            return None
        end = start + len(core)
        lead, trail = content[: len(content) - len(content.lstrip())], content[len(content.rstrip()) :]
        if lead and start - len(lead) >= cursor and text.startswith(lead, start - len(lead)):
            start -= len(lead)
        if trail and text.startswith(trail, end):
            end += len(trail)
        spans[i] = (start, end)
        cursor = end
    return spans


def _marked(messages: list[dict[str, Any]], whole_tool_calls: bool) -> tuple[list[dict[str, Any]], list[int]]:
    """Messages with each assistant answer replaced by a sentinel. With `whole_tool_calls`, a tool-call
    message becomes a plain answer, so its sentinel stands where the template writes the call."""
    out, marked = list(messages), []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        if m.get("tool_calls") and whole_tool_calls:
            out[i] = {"role": "assistant", "content": _SENTINEL.format(i)}
        elif isinstance(m.get("content"), str) and (m["content"] or not m.get("tool_calls")):
            out[i] = {**m, "content": _SENTINEL.format(i)}
        else:
            continue
        marked.append(i)
    return out, marked


def _region_end(text: str, pos: int, after: str, last: bool, message: dict[str, Any]) -> int | None:
    """Where the answer that starts at `pos` ends, given the template text `after` that follows it."""
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    if not message.get("tool_calls"):
        for v in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = pos + len(v)
            if text.startswith(v, pos) and (text[end:] == after if last else text.startswith(after, end)):
                return end
    # The template rewrote the answer (or wrote a tool call): the region runs to the next template text
    # and must still hold the answer and every called function's name.
    if last:
        end = len(text) - len(after) if text.endswith(after) else -1
    else:
        end = text.find(after, pos) if after else -1
    if end < pos:
        return None
    region = text[pos:end]
    calls = message.get("tool_calls") or []
    # A name that is not a string (data check rejects such rows; this keeps a direct caller from crashing).
    names = [str((c.get("function") or {}).get("name", "")) for c in calls if isinstance(c, dict)]
    if content.strip() not in region or not all(n in region for n in names):
        return None
    return end


def _locate_by_sentinels(
    text: str,
    messages: list[dict[str, Any]],
    tokenizer: Any,
    tools: list[dict[str, Any]] | None,
    whole_tool_calls: bool,
) -> dict[int, tuple[int, int]]:
    """Render once more with each answer replaced by a sentinel; the template text between sentinels
    anchors each answer in the real text exactly. Empty when the two renders do not line up."""
    marked_messages, marked = _marked(messages, whole_tool_calls)
    try:
        marked_text = _apply(tokenizer, marked_messages, tools)
    except TemplateError:
        return {}
    found = []  # (message index, position in marked_text); a dropped answer has no sentinel
    for i in marked:
        tag = _SENTINEL.format(i)
        at = marked_text.find(tag)
        if at >= 0 and marked_text.find(tag, at + 1) < 0 and tag not in text:
            found.append((i, at))
    found.sort(key=lambda x: x[1])
    bounds = [0] + [at + len(_SENTINEL.format(i)) for i, at in found]
    pieces = [marked_text[bounds[k] : at] for k, (_, at) in enumerate(found)] + [marked_text[bounds[-1] :]]
    # A template may write a space before an answer but none before a tool call (Mistral v3:
    # "[/INST] answer" but "[/INST][TOOL_CALLS]"), so before a tool call the piece may lose its
    # trailing whitespace.
    loose = [bool(messages[i].get("tool_calls")) for i, _ in found] + [False]
    spans: dict[int, tuple[int, int]] = {}
    pos = 0
    for k, (i, _) in enumerate(found):
        piece = pieces[k]
        if not text.startswith(piece, pos) and loose[k]:
            piece = piece.rstrip()
        if not text.startswith(piece, pos):
            return {}
        pos += len(piece)
        last = k + 1 == len(found)
        end = _region_end(text, pos, pieces[k + 1], last, messages[i])
        if end is None and loose[k + 1]:
            end = _region_end(text, pos, pieces[k + 1].rstrip(), last, messages[i])
        if end is None:
            return {}
        spans[i], pos = (pos, end), end
    return spans


def render(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    *,
    tools: list[dict[str, Any]] | None = None,
    train_on: TrainOn = "all",
) -> Rendered:
    """Render a conversation with the tokenizer's chat template and find the characters to train.

    Raises TemplateError: `template_error` when the template rejects the conversation,
    `template_drops_content` when a trained answer is not in the rendered text. An assistant message
    with only tool calls is trained on its rendered call when that can be located (it can for
    templates that write the call where they write an answer: Llama 3.x, Qwen 2.5, Mistral v3);
    otherwise it is left untrained rather than guessed at.
    """
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("content") is not None and not isinstance(m["content"], str):
            raise TemplateError("non_string_content", "assistant content must be a string", f"messages[{i}].content")
    messages = _for_template(messages, tokenizer)
    text = _apply(tokenizer, messages, tools)
    located = _locate_fast(text, messages)
    if located is None:
        located = _locate_by_sentinels(text, messages, tokenizer, tools, whole_tool_calls=True)
        if not located and any(m.get("tool_calls") for m in messages):
            located = _locate_by_sentinels(text, messages, tokenizer, tools, whole_tool_calls=False)
    trained = trained_indices(messages, train_on)
    for i in trained:
        if i not in located and not messages[i].get("tool_calls"):
            raise TemplateError(
                "template_drops_content",
                "this assistant answer is not in the text the chat template renders (the template drops or rewrites it)",
                f"messages[{i}].content",
            )
    spans = [located[i] for i in trained if i in located]
    ends = bool(trained) and trained[-1] == len(messages) - 1 and trained[-1] in located
    return Rendered(text, spans, ends)


# --- tokens and labels -----------------------------------------------------------------------------


def label(
    rendered: Rendered, input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], specials: _Specials
) -> Encoded:
    """Labels for the tokens of `rendered.text`: a token is trained when it overlaps a trained span,
    and so is the end-of-turn token after each span. Two binary searches on the offsets per span and
    list slice assignment, no loop over tokens: ~10 µs for a 300-token row, where merely converting
    its offsets to a numpy array costs ~150 µs. Offsets of one text are in order (fast tokenizers)."""
    ids = list(input_ids)
    labels = [IGNORE_INDEX] * len(ids)
    terminators: list[int | None] = []
    hi = 0
    for a, b in rendered.spans:
        lo = bisect_right(offsets, a, key=_END)  # first token ending inside the span
        hi = max(lo, bisect_left(offsets, b, key=_START))  # first token starting after it
        if lo < hi and ids[lo] in specials.ids and offsets[lo][0] < a:
            lo += 1  # a header token that swallowed the answer's leading space (Phi-3's rstrip tokens)
        stop = _end_of_turn(rendered.text, ids, offsets, specials, lo, hi)
        last = hi if stop is None else max(hi, stop + 1)
        labels[lo:last] = ids[lo:last]
        terminators.append(None if stop is None else ids[stop])

    eos_appended = rendered.ends_with_answer and terminators[-1] is None and specials.eos_id is not None
    if eos_appended:
        # The template ends the final answer with no end-of-turn: append EOS, and train it (and any
        # trailing whitespace before it) so the model still learns to stop.
        if all(rendered.text[s:e].isspace() for s, e in offsets[hi:]):
            labels[hi:] = ids[hi:]
        ids.append(specials.eos_id)
        labels.append(specials.eos_id)
    return Encoded(
        input_ids=ids,
        labels=labels,
        attention_mask=[1] * len(ids),
        n_trained=len(labels) - labels.count(IGNORE_INDEX),
        eos_appended=bool(eos_appended),
        terminators=tuple(terminators),
    )


def _end_of_turn(
    text: str, ids: list[int], offsets: Sequence[tuple[int, int]], specials: _Specials, lo: int, hi: int
) -> int | None:
    """Index of the end-of-turn token after the answer in tokens [lo, hi): the first special token
    after it, with only whitespace tokens between. BOS never ends a turn."""
    if lo < hi and ids[hi - 1] in specials.ids and ids[hi - 1] != specials.bos_id:
        return hi - 1  # a left-stripping end token that swallowed the answer's trailing space
    for j in range(hi, min(hi + _MAX_GAP_TOKENS + 1, len(ids))):
        if ids[j] in specials.ids:
            return j if ids[j] != specials.bos_id else None
        start, end = offsets[j]
        if not text[start:end].isspace():
            return None
    return None


def tokenize(tokenizer: Any, texts: list[str]) -> Any:
    """Tokenize rendered texts the way apply_chat_template(tokenize=True) does, plus offsets.
    verbose=False: no "longer than model_max_length" warning; `data check` reports lengths itself."""
    return tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
    )


def encode(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    *,
    tools: list[dict[str, Any]] | None = None,
    train_on: TrainOn = "all",
) -> Encoded:
    """One conversation to input_ids, labels and attention_mask. Raises TemplateError."""
    return encode_rendered(render(messages, tokenizer, tools=tools, train_on=train_on), tokenizer)


def encode_rendered(rendered: Rendered, tokenizer: Any) -> Encoded:
    """Tokenize and label one already-rendered conversation."""
    batch = tokenize(tokenizer, [rendered.text])
    return label(rendered, batch["input_ids"][0], batch["offset_mapping"][0], _Specials.of(tokenizer))


def iter_encode(
    conversations: Iterable[Conversation], tokenizer: Any, *, train_on: TrainOn = "all", chunk_size: int = 1000
) -> Iterator[Encoded | TemplateError]:
    """`encode` for many conversations, in order, one fast-tokenizer call per chunk. A row that fails
    yields its TemplateError instead of raising. Streams, so 100k rows never sit in memory at once."""
    specials = _Specials.of(tokenizer)
    chunk: list[Conversation] = []
    for conversation in conversations:
        chunk.append(conversation)
        if len(chunk) >= chunk_size:
            yield from _encode_chunk(chunk, tokenizer, train_on, specials)
            chunk = []
    if chunk:
        yield from _encode_chunk(chunk, tokenizer, train_on, specials)


def encode_batch(
    conversations: Iterable[Conversation], tokenizer: Any, *, train_on: TrainOn = "all"
) -> list[Encoded | TemplateError]:
    """`encode` for many conversations: one result per row, a TemplateError for a row that fails."""
    return list(iter_encode(conversations, tokenizer, train_on=train_on))


def _encode_chunk(
    chunk: list[Conversation], tokenizer: Any, train_on: TrainOn, specials: _Specials
) -> Iterator[Encoded | TemplateError]:
    rendered: list[Rendered | TemplateError] = []
    for conversation in chunk:
        try:
            rendered.append(render(conversation.messages, tokenizer, tools=conversation.tools, train_on=train_on))
        except TemplateError as e:
            rendered.append(e)
    texts = [r.text for r in rendered if isinstance(r, Rendered)]
    batch = tokenize(tokenizer, texts) if texts else None
    k = 0
    for r in rendered:
        if isinstance(r, TemplateError):
            yield r
            continue
        yield label(r, batch["input_ids"][k], batch["offset_mapping"][k], specials)
        k += 1


# --- tokenizer-level findings ----------------------------------------------------------------------

_PROBE_SYSTEM = {"role": "system", "content": "Answer with one word."}
_PROBE = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]


def inspect_tokenizer(tokenizer: Any) -> list[tuple[str, str]]:
    """Findings about the tokenizer and its template, as (code, message), from rendering a tiny
    two-turn conversation with a system message."""
    findings: list[tuple[str, str]] = []
    if not tokenizer.chat_template or tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE:
        findings.append(
            (
                "no_chat_template",
                "the tokenizer has no chat template: tunesmith uses its default "
                "(plain-text '### Role:' headers, EOS after each answer); set model.chat_template to use another",
            )
        )
    try:
        rendered = render([_PROBE_SYSTEM, *_PROBE], tokenizer)
        if _PROBE_SYSTEM["content"] not in rendered.text:
            findings.append(
                (
                    "template_drops_content",
                    "the chat template drops system messages: the model never "
                    "sees them; merge them into the first user message or set model.chat_template",
                )
            )
    except TemplateError as e:
        findings.append(
            (
                "template_error",
                f"the chat template rejects a system message ({e.message}); every row "
                "with one will fail: merge it into the first user message or set model.chat_template",
            )
        )
        try:
            rendered = render(_PROBE, tokenizer)
        except TemplateError as e2:
            findings.append(
                ("template_error", f"the chat template rejects a plain user/assistant conversation: {e2.message}")
            )
            return findings + _pad_findings(tokenizer)
    encoded = encode_rendered(rendered, tokenizer)
    findings += _bos_findings(tokenizer, rendered.text)
    findings += _stop_findings(tokenizer, encoded)
    return findings + _pad_findings(tokenizer)


def _bos_findings(tokenizer: Any, text: str) -> list[tuple[str, str]]:
    bos = tokenizer.bos_token
    if not bos or not text.startswith(bos):
        return []
    ids = tokenizer(text).input_ids  # default add_special_tokens=True, as naive code would call it
    if ids[:2] != [tokenizer.bos_token_id] * 2:
        return []
    return [
        (
            "double_bos",
            f"the chat template writes {bos} and tokenizer(text) adds another one; tunesmith "
            "tokenizes rendered text with add_special_tokens=False (as apply_chat_template does), so only "
            "code that tokenizes rendered text itself gets two",
        )
    ]


def _stop_findings(tokenizer: Any, encoded: Encoded) -> list[tuple[str, str]]:
    out = []
    eos = tokenizer.eos_token
    others = sorted({t for t in encoded.terminators if t is not None and t != tokenizer.eos_token_id})
    if others:
        names = ", ".join(tokenizer.convert_ids_to_tokens(others))
        out.append(
            (
                "stop_token_mismatch",
                f"assistant turns end with {names} but eos_token is {eos}: generation "
                f"must stop on both (pass both ids as eos_token_id)",
            )
        )
    if None in encoded.terminators:
        how = (
            f"tunesmith appends {eos} after the final answer and trains it, so the model still learns to stop"
            if eos
            else "the tokenizer has no eos_token either, so the model cannot learn to stop"
        )
        out.append(("no_end_of_turn", f"the chat template writes no end-of-turn token after an assistant turn; {how}"))
    return out


def _pad_findings(tokenizer: Any) -> list[tuple[str, str]]:
    how = (
        "tunesmith pads by position (attention_mask 0) and masks labels by position, not by token id, "
        "so the trained EOS is still learned"
    )
    if tokenizer.pad_token is None:
        return [("pad_token", f"the tokenizer has no pad token; {how}")]
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        return [("pad_token", f"pad_token == eos_token ({tokenizer.eos_token}); {how}")]
    return []
