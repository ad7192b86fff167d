"""Scoring suites: one module each, registered by name. Adding a suite is adding a file here.

Every suite scores `ScoreRow`s, whether they came from `eval RUN_DIR` (our own generations) or
from `eval score FILE` (outputs produced anywhere): one scoring path for both. A suite is built from
the `eval:` config section (`EvalConfig`) and reads its own options there (`sql`, `json_schema`,
`judge`); `eval score`'s command-line options fill that same section.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from tunesmith.config import EvalConfig


@dataclass
class ScoreRow:
    """One output to score. `prompt` is text or OpenAI messages; `extra` keeps every other field."""

    id: str
    prompt: str | list[dict[str, Any]]
    prediction: str
    reference: str | None = None
    baseline: str | None = None  # a second output, for pairwise judging
    db: str | None = None  # per-row database (text-to-SQL sets spanning several databases)
    extra: dict[str, Any] = field(default_factory=dict)


class Suite(Protocol):
    """Scores rows one by one (`score`) and sums them up (`summarize`, the suite's summary keys)."""

    name: ClassVar[str]

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]: ...

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]: ...


SUITES: dict[str, Callable[..., Suite]] = {}


def register(factory: Callable[..., Suite]) -> Callable[..., Suite]:
    """Class decorator: make a suite available by its `name`; the factory takes an EvalConfig."""
    SUITES[factory.name] = factory  # type: ignore[attr-defined]
    return factory


def get_suite(name: str, config: EvalConfig | None = None) -> Suite:
    """The suite called `name`, built from the eval config (its own options in there)."""
    _discover()
    if name not in SUITES:
        raise KeyError(f"unknown evaluation suite {name!r}; known: {', '.join(sorted(SUITES))}")
    return SUITES[name](config or EvalConfig())


def suite_names() -> list[str]:
    _discover()
    return sorted(SUITES)


def _discover() -> None:
    # Importing a module runs its @register; each module is imported once.
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
