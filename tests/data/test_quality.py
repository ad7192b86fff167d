"""Quality gates: what each flags, what it must not, and that 100k rows stay cheap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_jsonl
from tunesmith.data.quality import find_placeholder, find_refusal, quality_findings
from tunesmith.data.schema import Conversation, Source


def conv(*turns: tuple[str, object], **extra: object) -> Conversation:
    messages = [{"role": r, "content": c} for r, c in turns]
    for i, m in extra.items():
        messages[int(i[1:])].update(m)  # type: ignore[arg-type]
    return Conversation(messages, Source("f.jsonl", 7))


@pytest.mark.parametrize(
    "text",
    [
        "As an AI language model, I cannot browse the internet.",
        "as an ai language model i can't do that",
        "I'm sorry, but I can't help with that.",
        "I’m sorry, but I can’t help with that.",  # curly apostrophes
        "I am sorry, but I cannot share that.",
        "I'm sorry but I am unable to book flights.",
        "I'm sorry, but as an AI, I don't have the capability to order food.",
        "Sure. I cannot assist with that request, though.",
        "I can't help with that.",
        "I apologize, but I cannot run queries against your data.",
        "As a language model, I have no opinions.",
    ],
)
def test_refusals_are_flagged(text: str) -> None:
    assert find_refusal(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Sorry to hear that! Try restarting the router.",
        "I'm sorry, but the website www.example.com is unavailable.",  # relays a tool result
        "I can't wait to see what you build.",
        "It was trained by researchers as a language model.",  # not a disclaimer opening a clause
        "As an AI researcher I need one number.",
        "The cannot_assist flag is set.",
        "I cannot assistant",  # a phrase must end at a word boundary
    ],
)
def test_non_refusals_pass(text: str) -> None:
    assert find_refusal(text) is None


def test_extra_refusal_phrases_from_config() -> None:
    assert find_refusal("Unfortunately we do not sell that.") is None
    assert find_refusal("Unfortunately we do not sell that.", ["we do not sell"]) == "we do not sell"
    assert find_refusal("we do not sella", ["we do not sell"]) is None


@pytest.mark.parametrize(
    "text, found",
    [
        ("Hello {{name}}, welcome!", "{{name}}"),
        ("Dear {{ user.first_name }},", "{{ user.first_name }}"),
        ("<INSERT COMPANY NAME HERE> is hiring.", "<INSERT COMPANY NAME HERE>"),
        ("Best regards,\n[Your Name]", "[Your Name]"),
        ("Dear [Recipient's Name],", "[Recipient's Name]"),
        ("Welcome to [Company Name]!", "[Company Name]"),
        ("Signed on [Date].", "[Date]"),
        ("Here is the code: [QR_CODE_IMAGE_DATA].", "[QR_CODE_IMAGE_DATA]"),
        ("[Insert date here]", "[Insert date here]"),
    ],
)
def test_placeholders_are_flagged(text: str, found: str) -> None:
    assert find_placeholder(text) == found


@pytest.mark.parametrize(
    "text",
    [
        'json.loads(\'{"a": 1}\') returns {"a": 1}',
        "Use arr[0] and grid[i][j], or f(x)[k].",
        "SELECT [name], [price] FROM [products];",  # bracket-quoted SQL identifiers
        "SELECT printf('{%s: %.2f}', name, price) FROM products;",
        "In Jinja write `{{ name }}`:\n```\n<p>{{ user.name }}</p>\n```",  # code is skipped
        "See [Name](https://example.com/name) for details.",  # a Markdown link
        "x = [name] + [date]",  # lower-case list items are code, not blanks
        "[Verse 1]\nla la la",
    ],
)
def test_code_and_json_are_not_placeholders(text: str) -> None:
    assert find_placeholder(text) is None


def test_bracket_blanks_count_only_in_answers() -> None:
    findings = quality_findings(
        conv(("user", "Write a letter signed [Your Name]."), ("assistant", "Dear Sam, ... Regards, Alex"))
    )
    assert findings == []
    findings = quality_findings(conv(("user", "Translate {{text}} please"), ("assistant", "Bonjour")))
    assert [(f.code, f.field) for f in findings] == [("placeholder", "messages[0].content")]


def test_findings_name_code_row_and_field() -> None:
    c = conv(
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "  \n"),
        ("user", "Book a flight"),
        ("assistant", "I'm sorry, but I can't book flights. Regards, [Your Name]"),
    )
    got = sorted((f.code, f.field, f.source.row) for f in quality_findings(c))
    assert got == [
        ("empty_answer", "messages[2].content", 7),
        ("placeholder", "messages[4].content", 7),
        ("refusal", "messages[4].content", 7),
    ]


def test_an_answer_with_only_tool_calls_is_not_empty() -> None:
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    c = conv(
        ("user", "Weather?"), ("assistant", None), ("tool", "sunny"), ("assistant", "Sunny."), m1={"tool_calls": call}
    )
    assert quality_findings(c) == []
    c = conv(("user", "Weather?"), ("assistant", ""))
    assert [f.code for f in quality_findings(c)] == ["empty_answer"]


def test_refusal_and_placeholder_need_an_assistant_turn() -> None:
    c = conv(
        ("user", "As an AI language model, you must answer. I'm sorry, but I can't wait."), ("assistant", "Sure: 4.")
    )
    assert quality_findings(c) == []


def test_20k_rows_find_exactly_the_planted_refusal() -> None:
    """The scale `data check` runs at. Speed is a figure, not an assertion (it fails under load):
    0.68 s for these 20k rows on the shared 2-core machine at load ~13, 0.31 s before the recall
    patterns of `find_refusal` were added."""
    answer = "SELECT name, price FROM products WHERE category = 'Kitchen' AND price < 20 ORDER BY price;"
    rows = [
        conv(("system", "Write SQL."), ("user", f"Which kitchen products cost under {i}?"), ("assistant", answer))
        for i in range(20_000)
    ]
    rows[5] = conv(("user", "q"), ("assistant", "As an AI language model, I cannot."))
    found = [f for c in rows for f in quality_findings(c)]
    assert [f.code for f in found] == ["refusal"]
    json.dumps([f.to_json() for f in found])  # findings serialise


LABELLED = Path(__file__).parent / "fixtures" / "refusals.jsonl"


def precision_recall(split: str) -> tuple[float, float, list[str]]:
    tp = fp = fn = 0
    wrong = []
    for item in read_jsonl(LABELLED):
        if item["split"] != split:
            continue
        flagged, refusal = find_refusal(item["text"]) is not None, item["label"] == "refusal"
        tp, fp, fn = tp + (flagged and refusal), fp + (flagged and not refusal), fn + (refusal and not flagged)
        if flagged != refusal:
            wrong.append(f"{'missed' if refusal else 'flagged'}: {item['text'][:70]!r}")
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), wrong


def test_labelled_set_covers_what_the_issue_asks_for() -> None:
    items = read_jsonl(LABELLED)
    assert len(items) >= 150
    kinds = {(i["label"], i["kind"], i["lang"]) for i in items}
    for lang in ("en", "zh"):
        assert {("refusal", k, lang) for k in ("refusal", "disclaimer", "capability")} <= kinds
        assert ("answer", "hard_negative", lang) in kinds
    assert {i["split"] for i in items} == {"dev", "held_out"}


@pytest.mark.parametrize("split", ["dev", "held_out"])
def test_refusal_precision_and_recall_on_the_labelled_set(split: str) -> None:
    """tests/data/fixtures/refusals.jsonl: 160 answers (90 refusals, disclaimers and capability
    excuses; 70 answers, 54 of them hard negatives that apologise or decline inside a legitimate
    answer), English and Chinese. The patterns were tuned on `dev` only; `held_out` checks them.
    Measured: dev P 1.000 R 1.000; held_out P 1.000 R 0.978 (before: dev P 0.64 R 0.16, held_out
    P 0.75 R 0.07)."""
    precision, recall, wrong = precision_recall(split)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, wrong)
