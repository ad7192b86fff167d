"""`exact`, `regex`, `contains`: classification-like tasks, one label or phrase per answer.

- `exact`: the prediction equals the reference, after trimming, case folding and collapsing
  whitespace, and with one trailing period dropped ("Positive." == "positive").
- `regex`: the reference is a regular expression that must match somewhere in the prediction
  (`re.search`, case-insensitive); an invalid pattern is that row's error, reported.
- `contains`: the normalised reference appears in the normalised prediction.

Summary keys: `n`, `accuracy` (rows without a reference count as wrong, and are counted in `no_reference`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from tunesmith.config import EvalConfig
from tunesmith.evaluate.suites import ScoreRow, register


def normalize_text(text: str) -> str:
    text = " ".join((text or "").split()).casefold()
    return text[:-1] if text.endswith(".") else text


class _Match:
    name: ClassVar[str]

    def __init__(self, config: EvalConfig):
        self.config = config

    def match(self, prediction: str, reference: str) -> bool:
        raise NotImplementedError

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            if row.reference is None:
                out.append({"correct": False, "error": "no reference"})
                continue
            try:
                out.append({"correct": self.match(row.prediction, row.reference), "error": None})
            except re.error as e:
                out.append({"correct": False, "error": f"invalid pattern {row.reference!r}: {e}"})
        return out

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        return {
            "n": n,
            "accuracy": sum(s["correct"] for s in scores) / n if n else None,
            "no_reference": sum(s["error"] == "no reference" for s in scores),
        }


@register
class ExactSuite(_Match):
    name: ClassVar[str] = "exact"

    def match(self, prediction: str, reference: str) -> bool:
        return normalize_text(prediction) == normalize_text(reference)


@register
class RegexSuite(_Match):
    name: ClassVar[str] = "regex"

    def match(self, prediction: str, reference: str) -> bool:
        return re.search(reference, prediction or "", re.IGNORECASE) is not None


@register
class ContainsSuite(_Match):
    name: ClassVar[str] = "contains"

    def match(self, prediction: str, reference: str) -> bool:
        return normalize_text(reference) in normalize_text(prediction)
