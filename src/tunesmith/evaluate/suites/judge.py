"""`judge`: LLM-as-a-judge through any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama,
`tunesmith serve`), with the `openai` client.

Single mode (a row without `baseline`): the judge scores the prediction 1-5 on each rubric
criterion (default: accuracy, format compliance, tone), given the conversation and, when the row
has one, the reference answer. Pairwise mode (a row with `baseline`): the judge picks the better of
two answers, asked twice with the positions swapped, because LLM judges favour one position (the
MT-Bench paper measured it for GPT-4 and Claude); a verdict that changes with the position is a tie,
counted as `position_inconsistent`.

A verdict is a JSON object. An unparseable reply is asked for once more, with the reason; a reply
still unusable is an *invalid verdict*: counted and reported with its reason, never dropped and never
scored as zero (a zero would make a broken judge look like a bad model). 429 and 5xx answers (and
timeouts) are retried with exponential backoff. Token usage, and cost when prices are configured,
are reported.

The API key comes from TUNESMITH_JUDGE_API_KEY or OPENAI_API_KEY and lives only in the client
object: no score, summary, log line or error message holds it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tunesmith.config import ConfigError, EvalConfig, JudgeConfig
from tunesmith.evaluate.suites import ScoreRow, register

API_KEY_ENV_VARS = ("TUNESMITH_JUDGE_API_KEY", "OPENAI_API_KEY")
# Local OpenAI-compatible servers take any key, but the client refuses to start without one.
NO_KEY = "no-key"
# The judge's reply is kept in a score row (to show what went wrong) up to this many characters.
MAX_RAW_CHARS = 500
# A Retry-After header longer than this is not waited for in full: the run would look hung.
MAX_WAIT_S = 60.0

DEFAULT_RUBRIC: dict[str, str] = {
    "accuracy": (
        "Is the answer correct and complete for what was asked (and consistent with the reference answer, "
        "when one is given)? 1: wrong, irrelevant or empty. 2: mostly wrong. 3: partly right, with a significant "
        "error or omission. 4: right, with a minor flaw. 5: fully right and complete."
    ),
    "format_compliance": (
        "Does the answer follow the format the conversation asks for (structure, length, language, code fences, "
        "JSON, a single word, ...)? 1: ignores it. 2: mostly ignores it. 3: partly follows it. 4: follows it with "
        "a small deviation. 5: follows it exactly."
    ),
    "tone": (
        "Is the tone right for the request: clear, direct and polite, without filler, rambling or needless "
        "refusals? 1: inappropriate or unreadable. 2: poor. 3: acceptable. 4: good. 5: exactly right."
    ),
}
WINNERS = ("A", "B", "tie")


class JudgeError(ConfigError):
    """The judge cannot be used at all (wrong URL, model or key): stop rather than mark every row.
    A ConfigError, so the CLI reports it as one (exit 2)."""


def api_key() -> str | None:
    """The judge's API key from the environment, or None. Read here only, passed to the client only."""
    for name in API_KEY_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def load_rubric(path: str | Path | None) -> dict[str, str]:
    """The criteria: DEFAULT_RUBRIC, or a YAML file mapping each criterion's name to its definition
    (text, or a mapping from score 1..5 to what that score means)."""
    if path is None:
        return dict(DEFAULT_RUBRIC)
    where = f"eval.judge.rubric {path}"
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where}: expected a mapping of criterion name to definition, e.g. 'accuracy: 1: ... 5: ...'"
        )
    rubric: dict[str, str] = {}
    for name, definition in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", name):
            raise ConfigError(f"{where}: criterion {name!r}: use a plain name (letters, digits, _ or -)")
        if isinstance(definition, dict):
            definition = " ".join(f"{score}: {text}" for score, text in definition.items())
        if not isinstance(definition, str) or not definition.strip():
            raise ConfigError(
                f"{where}: criterion {name!r}: the definition must be text, or a mapping of score to text"
            )
        rubric[name] = definition.strip()
    return rubric


# --- prompts -----------------------------------------------------------------------------------------


def _conversation_text(prompt: str | list[dict[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in prompt)


def _rubric_text(rubric: dict[str, str]) -> str:
    return "\n".join(f"- {name}: {definition}" for name, definition in rubric.items())


def single_messages(row: ScoreRow, rubric: dict[str, str]) -> list[dict[str, str]]:
    shape = ", ".join(f'"{name}": <1-5>' for name in rubric)
    system = (
        "You are an impartial judge of answers written by an AI assistant. Score the answer on each criterion "
        f"from 1 (worst) to 5 (best), using these definitions:\n{_rubric_text(rubric)}\n\n"
        "Reply with one JSON object and nothing else, in this shape:\n"
        f'{{{shape}, "rationale": "<one or two sentences>"}}'
    )
    parts = [f"[Conversation]\n{_conversation_text(row.prompt)}"]
    if row.reference is not None:
        parts.append(f"[Reference answer]\n{row.reference}")
    parts.append(f"[Answer to judge]\n{row.prediction}")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def pairwise_messages(row: ScoreRow, rubric: dict[str, str], first: str, second: str) -> list[dict[str, str]]:
    system = (
        "You are an impartial judge comparing two answers, A and B, written by AI assistants for the same "
        f"conversation. Judge them by these criteria:\n{_rubric_text(rubric)}\n\n"
        "Neither the order of the answers nor their length is a reason to prefer one. Reply with one JSON "
        'object and nothing else, in this shape:\n{"winner": "A" | "B" | "tie", "rationale": "<one or two sentences>"}'
    )
    parts = [f"[Conversation]\n{_conversation_text(row.prompt)}"]
    if row.reference is not None:
        parts.append(f"[Reference answer]\n{row.reference}")
    parts += [f"[Answer A]\n{first}", f"[Answer B]\n{second}"]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


# --- parsing -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a judge's reply: the whole reply, else a fenced block, else the span from
    the first `{` to the last `}` (judges like to add a sentence around it). Raises ValueError."""
    candidates = [text.strip()]
    candidates += _FENCE.findall(text)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the reply")


def _score_value(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= 5 else None


def parse_single(text: str, rubric: dict[str, str]) -> dict[str, Any]:
    """{"scores": {criterion: 1..5}, "rationale": ...} from a reply; ValueError says what is wrong."""
    obj = parse_json_object(text)
    scores = obj.get("scores") if isinstance(obj.get("scores"), dict) else obj
    out: dict[str, int] = {}
    for name in rubric:
        value = _score_value(scores.get(name))
        if value is None:
            raise ValueError(f"criterion {name!r} is missing or not an integer from 1 to 5 (got {scores.get(name)!r})")
        out[name] = value
    return {"scores": out, "rationale": str(obj.get("rationale", ""))}


def parse_pairwise(text: str) -> dict[str, Any]:
    """{"winner": "A" | "B" | "tie", "rationale": ...}; ValueError says what is wrong."""
    obj = parse_json_object(text)
    winner = obj.get("winner")
    normal = {"a": "A", "b": "B", "tie": "tie", "draw": "tie"}.get(str(winner).strip().lower()) if winner else None
    if normal is None:
        raise ValueError(f'"winner" must be "A", "B" or "tie" (got {winner!r})')
    return {"winner": normal, "rationale": str(obj.get("rationale", ""))}


# --- the suite -------------------------------------------------------------------------------------


class _Usage:
    """Requests, retries and tokens of one row's judging (summed over rows by `summarize`)."""

    def __init__(self) -> None:
        self.requests = self.retries = self.prompt_tokens = self.completion_tokens = self.without_usage = 0

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


class _RowFailed(Exception):
    """This row's verdict cannot be had (retries exhausted, request rejected): an invalid verdict."""


@register
class JudgeSuite:
    """Scores rows with an LLM judge; see the module docstring. `client`: an `openai.OpenAI`-like
    object (tests pass one; by default it is built from `config.judge` and the environment)."""

    name: ClassVar[str] = "judge"

    def __init__(self, config: EvalConfig | None = None, *, client: Any = None):
        self.config: JudgeConfig = (config or EvalConfig()).judge
        if not self.config.model:
            raise ConfigError("judge suite: eval.judge.model is not set (pass --judge-model, e.g. gpt-4o-mini)")
        self.rubric = load_rubric(self.config.rubric)
        if client is None:
            import openai

            # max_retries=0: we retry ourselves, to count retries and keep one backoff policy.
            client = openai.OpenAI(
                base_url=self.config.url, api_key=api_key() or NO_KEY, max_retries=0, timeout=self.config.timeout_s
            )
        self.client = client

    # -- scoring --

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]:
        """One score per row, in order. Rows are judged `config.concurrency` at a time."""
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(self._score_row, rows))

    def _score_row(self, row: ScoreRow) -> dict[str, Any]:
        usage = _Usage()
        if row.baseline is None:
            result = self._single(row, usage)
        else:
            result = self._pairwise(row, usage)
        result["usage"] = usage.to_json()
        return result

    def _single(self, row: ScoreRow, usage: _Usage) -> dict[str, Any]:
        verdict = self._verdict(single_messages(row, self.rubric), lambda text: parse_single(text, self.rubric), usage)
        if not verdict["valid"]:
            return {"mode": "single", **verdict}
        scores = verdict["scores"]
        return {
            "mode": "single",
            "valid": True,
            "scores": scores,
            "overall": sum(scores.values()) / len(scores),
            "rationale": verdict["rationale"],
            "attempts": verdict["attempts"],
        }

    def _pairwise(self, row: ScoreRow, usage: _Usage) -> dict[str, Any]:
        # Order 1: the prediction is A. Order 2: the prediction is B. Each verdict is mapped to the
        # prediction's point of view: win, loss or tie.
        outcomes, raw = [], []
        for first, second, prediction_is in ((row.prediction, row.baseline, "A"), (row.baseline, row.prediction, "B")):
            verdict = self._verdict(pairwise_messages(row, self.rubric, first, second), parse_pairwise, usage)
            raw.append(verdict)
            if not verdict["valid"]:
                return {"mode": "pairwise", **verdict, "orders": raw}
            winner = verdict["winner"]
            outcomes.append("tie" if winner == "tie" else "win" if winner == prediction_is else "loss")
        consistent = outcomes[0] == outcomes[1]
        return {
            "mode": "pairwise",
            "valid": True,
            "verdict": outcomes[0] if consistent else "tie",
            "position_inconsistent": not consistent,
            "orders": [{"prediction_is": p, "outcome": o, **v} for p, o, v in zip(("A", "B"), outcomes, raw)],
        }

    def _verdict(self, messages: list[dict[str, str]], parse: Any, usage: _Usage) -> dict[str, Any]:
        """Ask, parse; on an unparseable reply ask once more, saying why. Never raises for one row
        (except JudgeError): a verdict that cannot be had is returned as invalid, with its reason."""
        for attempt in (1, 2):
            try:
                text = self._complete(messages, usage)
            except _RowFailed as e:
                return {"valid": False, "reason": "request_failed", "error": str(e), "attempts": attempt}
            try:
                return {"valid": True, **parse(text), "attempts": attempt}
            except ValueError as e:
                error = str(e)
            messages = [
                *messages,
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That reply could not be used: {error}. Reply again with only the JSON object asked for.",
                },
            ]
        return {"valid": False, "reason": "unparseable", "error": error, "raw": text[:MAX_RAW_CHARS], "attempts": 2}

    def _complete(self, messages: list[dict[str, str]], usage: _Usage) -> str:
        import openai

        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        for retry in range(self.config.max_retries + 1):
            try:
                usage.requests += 1
                response = self.client.chat.completions.create(
                    model=self.config.model,
                    messages=messages,
                    temperature=0.0,
                    max_tokens=self.config.max_tokens,
                )
            except retryable as e:
                if retry == self.config.max_retries:
                    raise _RowFailed(f"{_describe(e)}; gave up after {retry} retries") from None
                usage.retries += 1
                time.sleep(self._wait_s(retry, e))
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise JudgeError(
                    f"the judge at {self.config.url or 'the OpenAI API'} refused model {self.config.model!r}: "
                    f"{_describe(e)}. Check --judge-url, --judge-model and the key in "
                    f"{' or '.join(API_KEY_ENV_VARS)}"
                ) from None
            except openai.APIStatusError as e:  # 400 and friends: this request, not the judge, is the problem
                raise _RowFailed(_describe(e)) from None
            if response.usage is None:
                usage.without_usage += 1
            else:
                usage.prompt_tokens += response.usage.prompt_tokens or 0
                usage.completion_tokens += response.usage.completion_tokens or 0
            return (response.choices[0].message.content or "") if response.choices else ""
        raise AssertionError("unreachable")

    def _wait_s(self, retry: int, error: Exception) -> float:
        response = getattr(error, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        try:
            if header is not None:
                return min(float(header), MAX_WAIT_S)
        except ValueError:  # an HTTP date: fall back to our own backoff
            pass
        return min(self.config.backoff_s * 2**retry, MAX_WAIT_S)

    # -- summary --

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """`n`, `invalid_verdicts` (+ `invalid_reasons`), `mean_scores` and `mean_overall` (single
        rows), `wins`, `losses`, `ties`, `position_inconsistent`, `win_rate` (pairwise rows; ties
        count as neither), `usage` and `cost_usd` (None without prices)."""
        valid = [s for s in scores if s.get("valid")]
        out: dict[str, Any] = {
            "n": len(scores),
            "invalid_verdicts": len(scores) - len(valid),
            "invalid_reasons": dict(Counter(s.get("reason", "unknown") for s in scores if not s.get("valid"))),
            "judge_model": self.config.model,
        }
        if any(s.get("mode") == "single" for s in scores):
            single = [s for s in valid if s["mode"] == "single"]
            out["mean_scores"] = {
                name: (sum(s["scores"][name] for s in single) / len(single) if single else None) for name in self.rubric
            }
            out["mean_overall"] = sum(s["overall"] for s in single) / len(single) if single else None
        if any(s.get("mode") == "pairwise" for s in scores):
            pairs = [s for s in valid if s["mode"] == "pairwise"]
            verdicts = Counter(s["verdict"] for s in pairs)
            out.update(
                wins=verdicts["win"],
                losses=verdicts["loss"],
                ties=verdicts["tie"],
                position_inconsistent=sum(s["position_inconsistent"] for s in pairs),
                win_rate=verdicts["win"] / len(pairs) if pairs else None,
            )
        usage = Counter()
        for s in scores:
            usage.update(s.get("usage", {}))
        out["usage"] = {k: usage[k] for k in _Usage().to_json()}
        prices = (self.config.price_input_per_mtok, self.config.price_output_per_mtok)
        out["cost_usd"] = (
            None
            if None in prices
            else (usage["prompt_tokens"] * prices[0] + usage["completion_tokens"] * prices[1]) / 1e6
        )
        return out


def _describe(error: Exception) -> str:
    """An openai error in one line, without the request (whose headers hold the key)."""
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or type(error).__name__
    return f"HTTP {status}: {message}" if status else f"{type(error).__name__}: {message}"
