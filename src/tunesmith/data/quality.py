"""Row-level quality gates: answers that teach the model the wrong thing.

Three gates, each a regular expression compiled once (100k rows take well under a second):

* `refusal`: an assistant turn that refuses or disclaims ("As an AI language model...",
  "I'm sorry, but I can't..."). Whole phrases, case-insensitive, at word boundaries, straight or
  curly apostrophes. A bare "sorry" is not a refusal ("Sorry to hear that, try...").
* `empty_answer`: an assistant turn with no text and no tool calls.
* `placeholder`: a template that was never filled: `{{name}}` or `<INSERT ...>` anywhere, and
  `[Your Name]`-style brackets in answers. Code (fenced blocks and `inline` spans) is skipped, and a
  bracket right after a word or bracket (`arr[0]`, `m[i][j]`) is indexing, not a placeholder.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from tunesmith.data.schema import Conversation, Finding

# Built-in refusal phrases, matched as whole phrases: "'" also matches a curly apostrophe and any
# run of spaces matches any whitespace. The "sorry" openers come with and without their comma.
_SORRY = ["I'm sorry, but", "I am sorry, but", "I'm sorry,", "I am sorry,", "I apologize, but", "Sorry, but"]
_CANNOT = [
    "I can't",
    "I cannot",
    "I can not",
    "I won't be able to",
    "I'm unable to",
    "I am unable to",
    "I'm not able to",
    "I am not able to",
    "I don't have the capability",
    "I do not have the capability",
    "I don't have the ability",
    "I do not have the ability",
    "as an AI",
]
REFUSAL_PHRASES: tuple[str, ...] = (
    *(f"{s} {c}" for s in (*_SORRY, *(s.replace(",", "") for s in _SORRY)) for c in _CANNOT),
    # A disclaimer opens a clause, so the comma is required ("trained as a language model." is not
    # one), except in the one phrase nobody writes otherwise.
    "As an AI language model",
    "As an AI model,",
    "As a language model,",
    "As an AI assistant,",
    "As an AI,",
    "I cannot assist",
    "I can't assist",
    "I'm unable to assist",
    "I am unable to assist",
    "I cannot help with that",
    "I can't help with that",
    "I cannot help with this",
    "I can't help with this",
    "I cannot fulfill",
    "I can't fulfill",
    "I cannot comply",
    "I can't comply",
    "I cannot provide assistance",
    "I can't provide assistance",
)


def _word_pattern(word: str) -> str:
    return re.escape(word).replace("'", "['\u2019\u02bc]")


def _trie_pattern(trie: dict[str, dict]) -> str:
    """A regex for the phrases in a word trie: shared prefixes are matched once, so each position
    of a text tries a handful of first words, not every phrase (150 us -> ~5 us per answer)."""
    alternatives = []
    for word in sorted(w for w in trie if w):
        child = trie[word]
        pattern = _word_pattern(word)
        if any(child):  # phrases go on: match the longest, or stop here if a phrase ends here
            pattern += rf"(?:\s+{_trie_pattern(child)}){'?' if '' in child else ''}"
        alternatives.append(pattern)
    return f"(?:{'|'.join(alternatives)})"


@functools.lru_cache(maxsize=8)
def refusal_regex(extra_phrases: tuple[str, ...] = ()) -> re.Pattern[str]:
    """One regex for every phrase (built-in and `extra_phrases`), for lower-cased text, longest
    match first. It starts with a plain word, not a lookbehind or IGNORECASE, so `re` can skip
    ahead to the possible first letters: 4 us per answer instead of 16 (the left word boundary
    is checked by `find_refusal`)."""
    trie: dict[str, dict] = {}
    for phrase in (*REFUSAL_PHRASES, *extra_phrases):
        node = trie
        for word in phrase.lower().replace("\u2019", "'").split():
            node = node.setdefault(word, {})
        node[""] = {}  # a phrase ends here
    # The right word boundary: no word character may continue a phrase that ends with one.
    return re.compile(rf"{_trie_pattern(trie)}(?:(?<!\w)|(?!\w))")


_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_NOT_INDEXING = r"(?<![\w\]\)])"  # `arr[0]`, `m[i][j]`, `f(x)[k]` are indexing, not placeholders
# A template the filler never reached: in any message this is a bug in the data pipeline.
_TEMPLATE_SLOT = re.compile(
    r"\{\{\s*[A-Za-z_][\w.\- ]{0,40}?\s*\}\}"  # {{name}}, {{ user.name }}
    r"|<\s*(?:insert|enter|add|your)\b[^<>\n]{0,60}>"  # <INSERT NAME HERE>, <your answer>
    r"|\[\s*(?:insert|enter)\b[^\[\]\n]{0,60}\]",  # [Insert date]
    re.IGNORECASE,
)
_FIELD_NOUN = r"(?i:name|date|address|e-?mail|phone(?: number)?|title|company|organi[sz]ation|signature|city|position|role|website)"
# A blank left for the reader to fill: only a fault in an answer (a user may write one on purpose).
_BLANK = re.compile(
    _NOT_INDEXING + r"\[\s*(?:"
    r"(?i:your|recipient['\u2019]?s?|company['\u2019]?s?|placeholder)\b[^\[\]\n]{0,40}"  # [Your Name], [Recipient's Email]
    rf"|(?:[A-Z][a-z]+ |[A-Z]+ ){{0,3}}(?=[A-Z]){_FIELD_NOUN}"  # [Name], [Full Name], [START DATE]; not [name]
    r"|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"  # [QR_CODE_IMAGE_DATA], [FIRST_NAME]
    r")\s*\](?!\()"  # `[Name](https://...)` is a Markdown link
)


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"  # what `\w` matches in a str pattern


def find_refusal(text: str, extra_phrases: Sequence[str] = ()) -> str | None:
    """The refusal phrase in `text` (whole phrases, any case), or None."""
    regex, low = refusal_regex(tuple(extra_phrases)), text.lower()
    pos = 0
    while m := regex.search(low, pos):
        start = m.start()
        if start and _word_char(low[start - 1]) and _word_char(low[start]):
            pos = start + 1  # inside a word ("sorry" in "unsorry"): not a phrase start
            continue
        # lower() keeps offsets for all but a few characters (e.g. "İ"); then quote the lowered text.
        return text[start : m.end()] if len(low) == len(text) else m.group(0)
    return None


def find_placeholder(text: str, *, answer: bool = True) -> str | None:
    """The first unfilled placeholder outside code in `text`, or None. Bracketed blanks such as
    `[Your Name]` count only in answers (`answer=True`)."""
    if "`" in text:
        text = _CODE.sub(" ", text)
    has_bracket = "[" in text
    # `in` scans are ~50x cheaper than a regex search, and most texts hold none of these.
    m = _TEMPLATE_SLOT.search(text) if has_bracket or "{{" in text or "<" in text else None
    if m is None and answer and has_bracket:
        m = _BLANK.search(text)
    return m.group(0) if m else None


def _clip(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def quality_findings(conversation: Conversation, *, refusal_phrases: Sequence[str] = ()) -> list[Finding]:
    """Every `refusal`, `empty_answer` and `placeholder` finding of one conversation."""
    found: list[Finding] = []
    src = conversation.source
    extra = tuple(refusal_phrases)
    for i, msg in enumerate(conversation.messages):
        content = msg.get("content")
        text = content if isinstance(content, str) else ""
        where = f"messages[{i}].content"
        is_answer = msg.get("role") == "assistant"
        if is_answer and not text.strip() and not msg.get("tool_calls") and not msg.get("function_call"):
            found.append(Finding("empty_answer", src, "the assistant answer is empty (and calls no tool)", where))
            continue
        if is_answer and (phrase := find_refusal(text, extra)):
            found.append(Finding("refusal", src, f"the answer refuses or disclaims: {_clip(phrase)!r}", where))
        if placeholder := find_placeholder(text, answer=is_answer):
            found.append(Finding("placeholder", src, f"unfilled placeholder {_clip(placeholder)!r}", where))
    return found
