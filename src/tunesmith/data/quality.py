"""Row-level quality gates: answers that teach the model the wrong thing.

Three gates, each a few regular expressions compiled once (20k rows: ~0.7 s on a busy 2-core machine):

* `refusal`: an assistant turn that refuses, disclaims or excuses itself, in English or Chinese
  ("As an AI language model...", "I'm just an AI, so...", "I'm sorry, but I can't...", "I don't
  have access to real-time data", "作为一个人工智能语言模型", "抱歉，我无法..."). Whole phrases,
  case-insensitive, at word boundaries, straight or curly apostrophes. A bare "sorry" is not a
  refusal ("Sorry to hear that, try..."), nor is quoted speech or a letter written for the user
  ("Dear Ms. Lee, I'm sorry, but I can't attend..."). Measured on a labelled set of 160 answers
  (tests/data/fixtures/refusals.jsonl): precision 1.00, recall 0.98 on the half not tuned on.
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


# Beyond the phrase list: patterns measured on tests/data/fixtures/refusals.jsonl (160 labelled
# answers, English and Chinese; tuned on its `dev` half, reported on both in tests/data/test_quality.py).
# All run on lower-cased text with curly apostrophes straightened and quoted spans blanked out.
#
# 1. An AI speaking of itself, anywhere in the answer: "I'm just an AI, so...", "As a large language
#    model trained by...", "作为一个人工智能语言模型，". The noun must end the self-description
#    ("As an AI researcher, you..." and "An AI language model predicts..." are not disclaimers).
_SELF_END = r"(?=\s*(?:[,.;:!)\u2014-]|and\b|so\b|which\b|that\b|trained\b|developed\b|created\b|made\b|designed\b|built\b|by\b|with\b|without\b|i\b|$))"
# Every pattern starts with a plain letter, not a lookbehind, so `re` skips ahead to the possible
# first letters (a leading lookbehind made them 10-20x slower); `_search` checks the word boundary.
_AI_SELF = re.compile(
    r"(?:as|being|since i am|since i'm|i am|i'm|that i am|that i'm)\s+(?:just |only |merely |simply |not )?"
    r"(?:an?|the)\s+(?:large |artificial )?(?:ai|a\.i\.|artificial intelligence|language model|llm|ai language model"
    r"|ai model|ai assistant|ai chatbot|ai system|chatbot|virtual assistant|computer program|machine)" + _SELF_END
)
# "as"/"being" must open a clause: "It was trained as a language model." describes, not disclaims.
_CLAUSE_START = re.compile(r"(?:^|[.!?;:,\n(]|\b(?:and|but|so|well|no|yes|sorry|however))\s*$")
_ZH_AI_SELF = re.compile(
    r"(?:作为|身为|我是|我只是|我仅仅是|我不过是|我只不过是)(?:一个|一款|一名|一种)?(?:由[^，。,]{0,12}(?:驱动|开发|训练)的)?"
    r"(?:大型|大)?(?:人工智能|ai|语言模型)(?:语言模型|助手|模型|程序|聊天机器人)?(?=[，,。、；;\s]|我|没有|无法|不能|不|$)"
)
# 2. First-person inability or refusal, with what a refusal refuses: "I can't access your
#    database", "I won't help", "I don't have real-time data", "我无法访问", "超出了我的能力范围".
#    A bare "I can't" is not one ("I can't wait", "I can't recommend this enough").
_CANNOT_VERB = (
    r"(?:help|assist|provide|fulfill|fulfil|comply|answer|access|browse|generate|create|write|share|support"
    r"|complete|process|engage|discuss|give|offer|perform|predict|book|order|view|open|execute|run|search"
    r"|retrieve|send|call|physically|experience|feel|taste|form|express|recall|remember|listen|hear|set|do (?:that|this|anything)"
    r"|see (?:images|the image|your|pictures|photos|attachments|videos))"
)
_INABILITY = re.compile(
    r"i(?:\s*(?:can't|cannot|can not|am unable to|'m unable to|am not able to|'m not able to|won't be able to"
    r"|will not be able to|am not capable of|'m not capable of)\s+(?:\w+ly\s+)?" + _CANNOT_VERB + r"(?!\w)"
    r"|\s*(?:won't|will not|refuse to|am not going to|'m not going to|'d rather not|would rather not)\s+"
    r"(?:help|assist|provide|write|generate|create|do that|comply|share|produce|engage|answer|give|participate)(?!\w)"
    r"|\s+(?:must|have to)\s+(?:decline|refuse)(?!\w)|\s+decline to(?!\w)"
    r"|\s+(?:don't|do not)\s+have\s+(?:access to|the ability|the capability|the means|any way|a way|personal"
    r"|feelings|emotions|opinions|beliefs|consciousness|a body|a physical|real-time|realtime|memory of|internet access)(?!\w)"
    r"|\s+have\s+no\s+(?:way to|ability to|access to|means to|personal|feelings|emotions|opinions)(?!\w))"
    r"|my\s+(?:knowledge|training data)\s+(?:cutoff|cut-off|only goes|ends)(?!\w)"
    r"|th(?:at's|at is|is is)\s+not\s+something\s+i\s+can\s+(?:help|assist|do)(?!\w)"
)
_ZH_INABILITY = re.compile(
    r"我(?:无法|不能|没法|没有办法|做不到|不可以|不便)(?:为您|为你|帮您|帮你|替您|替你|给您|给你|直接)?"
    r"(?:帮助|协助|提供|回答|访问|浏览|完成|执行|满足|生成|获取|查看|记住|运行|拨打|破解|绕过|处理|参与|透露|分享|写|创作|保证|替|帮|做)"
    r"|我拒绝|(?:超出了?|超过了?)我的能力|我没有(?:办法|能力|权限|访问|浏览|实时|个人|情感|感情|主观|自己的)"
)
# Quoted speech is not the assistant's own voice ("the bot should answer: \"I'm sorry, but I
# can't...\""); a letter or message drafted for the user declines on the user's behalf ("Dear Ms.
# Lee, I'm sorry, but I can't attend..."). Both are blanked / skipped, except an AI's self-reference.
_QUOTED = re.compile(
    r'"[^"\n]{1,300}"|\u201c[^\u201d\n]{1,300}\u201d|\u300c[^\u300d\n]{1,300}\u300d|\'[^\'\n]{1,300}\''
)
_LETTER = re.compile(
    r"\s*(?:(?:dear|hi|hello|hey)\s+[^\n,:]{1,40}[,:]|subject:|to whom it may concern|尊敬的|亲爱的)", re.IGNORECASE
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})


def _blank_quote(m: re.Match[str]) -> str:
    quote, text, end = m.group(0), m.string, m.end()
    # 'single quotes' only as quotation marks, not the apostrophes of "I'm ... users'".
    if quote[0] == "'" and (
        (m.start() and _word_char(text[m.start() - 1])) or (end < len(text) and _word_char(text[end]))
    ):
        return quote
    return " " * len(quote)  # same length: offsets into the text stay valid


def _search(regex: re.Pattern[str], low: str, clause: bool = False) -> re.Match[str] | None:
    """The first match of `regex` that starts a word (and, with `clause`, whose "as"/"being" opens a clause)."""
    pos = 0
    while m := regex.search(low, pos):
        start = m.start()
        if (start and _word_char(low[start - 1])) or (
            clause and low.startswith(("as", "being"), start) and not _CLAUSE_START.search(low, 0, start)
        ):
            pos = start + 1
            continue
        return m
    return None


def find_refusal(text: str, extra_phrases: Sequence[str] = ()) -> str | None:
    """The refusal or AI disclaimer in `text` (built-in phrases and patterns, plus `extra_phrases`
    as whole phrases, any case), or None. See the patterns above for what counts."""
    low = text.lower().translate(_APOSTROPHES)
    if len(low) != len(text):  # lower() lengthens a few characters (e.g. "İ"): quote the lowered text
        text = low
    if '"' in low or "'" in low or "\u201c" in low or "\u300c" in low:
        low = _QUOTED.sub(_blank_quote, low)
    m = _search(_AI_SELF, low, clause=True) or _ZH_AI_SELF.search(low)
    if m:
        return text[m.start() : m.end()]
    if _LETTER.match(low):
        return None
    if span := _phrase(low, extra_phrases):
        return text[span[0] : span[1]]
    m = _search(_INABILITY, low) or _ZH_INABILITY.search(low)
    return text[m.start() : m.end()] if m else None


def _phrase(low: str, extra_phrases: Sequence[str]) -> tuple[int, int] | None:
    """Where the first whole phrase of the list (built-in and extra) is in lower-cased `low`."""
    regex = refusal_regex(tuple(extra_phrases))
    pos = 0
    while m := regex.search(low, pos):
        start = m.start()
        if start and _word_char(low[start - 1]) and _word_char(low[start]):
            pos = start + 1  # inside a word ("sorry" in "unsorry"): not a phrase start
            continue
        return start, m.end()
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
