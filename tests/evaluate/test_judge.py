"""The judge suite against a scripted OpenAI-compatible server on 127.0.0.1 (FastAPI in a thread).

The script keys its behaviour on a marker in the judged answer, so it does not depend on the order
in which concurrent requests arrive: `valid`, `junk-once` (unparseable, then valid on the retry),
`junk` (never parseable), `rate-once` / `busy-once` (429 / 503, then valid), `partial` (a criterion
missing), and for pairwise rows `biased` (always says A) and `good` (picks the answer saying GOOD).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tunesmith.config import ConfigError, EvalConfig, JudgeConfig
from tunesmith.evaluate.suites import ScoreRow, get_suite
from tunesmith.evaluate.suites.judge import DEFAULT_RUBRIC, JudgeError, load_rubric, parse_json_object
from tunesmith.runs import write_json, write_jsonl

from .local_server import running

SECRET = "sk-test-DO-NOT-LEAK-4242"
GOOD_SCORES = {"accuracy": 4, "format_compliance": 5, "tone": 3}


class ScriptedJudge:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)

    async def complete(self, request: Request):
        self.in_flight += 1  # one event loop: no lock needed between awaits
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for concurrent requests to overlap
            return await self._complete(request)
        finally:
            self.in_flight -= 1

    async def _complete(self, request: Request):
        body = await request.json()
        with self.lock:
            self.requests.append(body)
            self.auth.add(request.headers.get("authorization", ""))
            first = body["messages"][1]["content"]
            self.seen[first] += 1
            count = self.seen[first]
        retry = len(body["messages"]) > 2
        pairwise = "[Answer A]" in first
        if "rate-once" in first and count == 1:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0"})
        if "busy-once" in first and count == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if "junk" in first and not ("junk-once" in first and retry):
            return self._reply("Sure! The answer looks great to me.")
        if "partial" in first:
            return self._reply(json.dumps({"accuracy": 4}))
        if pairwise:
            a = first.split("[Answer A]")[1].split("[Answer B]")[0]
            if "biased" in first:
                winner = "A"
            else:
                winner = "A" if "GOOD" in a else "B"
            # Wrapped in prose and a fence, as real judges do.
            return self._reply(f'Here is my verdict:\n```json\n{{"winner": "{winner}", "rationale": "r"}}\n```')
        return self._reply(json.dumps({**GOOD_SCORES, "rationale": "fine"}))

    @staticmethod
    def _reply(text: str):
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }


@pytest.fixture
def judge_server():
    script = ScriptedJudge()
    with running(script.app) as url:
        yield script, f"{url}/v1"


def _config(url: str, **judge) -> EvalConfig:
    return EvalConfig(judge=JudgeConfig(url=url, model="scripted", backoff_s=0.01, **judge))


def _row(i: int, prediction: str, **kw) -> ScoreRow:
    return ScoreRow(id=str(i), prompt=[{"role": "user", "content": f"question {i}"}], prediction=prediction, **kw)


def test_single_verdicts_retry_and_invalid_are_counted_not_dropped(judge_server):
    script, url = judge_server
    suite = get_suite("judge", _config(url, concurrency=3, price_input_per_mtok=1.0, price_output_per_mtok=10.0))
    rows = [
        _row(0, "valid answer", reference="the reference 42"),
        _row(1, "junk-once answer"),
        _row(2, "junk answer"),
        _row(3, "rate-once answer"),
        _row(4, "busy-once answer"),
        _row(5, "partial answer"),
    ]
    scores = suite.score(rows)
    assert 2 <= script.max_in_flight <= 3  # concurrent, within the limit
    assert [s["valid"] for s in scores] == [True, True, False, True, True, False]
    assert scores[0]["scores"] == GOOD_SCORES and scores[0]["attempts"] == 1
    assert scores[1]["attempts"] == 2  # the retry told the judge why, and its second reply counted
    assert scores[2]["reason"] == "unparseable" and "Sure!" in scores[2]["raw"]
    assert "tone" in scores[5]["error"] or "format_compliance" in scores[5]["error"]
    assert scores[3]["usage"]["retries"] == 1 and scores[4]["usage"]["retries"] == 1
    # The reference reaches the judge when the row has one, and only then.
    first_user = {r["messages"][1]["content"] for r in script.requests}
    assert any("[Reference answer]\nthe reference 42" in c for c in first_user)
    assert not any("[Reference answer]" in c for c in first_user if "junk-once" in c)
    assert {r["temperature"] for r in script.requests} == {0.0}

    summary = suite.summarize(scores)
    assert summary["n"] == 6 and summary["invalid_verdicts"] == 2
    assert summary["invalid_reasons"] == {"unparseable": 2}
    # Invalid verdicts are left out of the means, not averaged in as zeros.
    assert summary["mean_scores"] == {k: float(v) for k, v in GOOD_SCORES.items()}
    assert summary["mean_overall"] == pytest.approx(sum(GOOD_SCORES.values()) / 3)
    requests = len(script.requests)
    assert summary["usage"]["requests"] == requests and summary["usage"]["retries"] == 2
    answered = requests - 2  # the 429 and the 503 carried no usage
    assert summary["usage"]["prompt_tokens"] == 100 * answered
    assert summary["cost_usd"] == pytest.approx((100 * answered * 1.0 + 10 * answered * 10.0) / 1e6)
    assert "wins" not in summary


def test_pairwise_swaps_positions_and_counts_position_bias(judge_server):
    script, url = judge_server
    suite = get_suite("judge", _config(url))
    rows = [
        _row(0, "GOOD tuned answer", baseline="weak base answer"),  # consistent win
        _row(1, "weak tuned answer", baseline="GOOD base answer"),  # consistent loss
        _row(2, "biased tuned answer", baseline="biased base answer"),  # always A: flips with position
        _row(3, "junk tuned answer", baseline="junk base answer"),  # invalid
    ]
    scores = suite.score(rows)
    assert [s.get("verdict") for s in scores] == ["win", "loss", "tie", None]
    assert [s.get("position_inconsistent") for s in scores] == [False, False, True, None]
    # Each valid row was asked in both orders: the prediction first as A, then as B.
    a_texts = [
        r["messages"][1]["content"].split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        for r in script.requests
        if "biased" in r["messages"][1]["content"]
    ]
    assert sorted(a_texts) == ["biased base answer", "biased tuned answer"]
    summary = suite.summarize(scores)
    assert {k: summary[k] for k in ("n", "wins", "losses", "ties", "position_inconsistent", "invalid_verdicts")} == {
        "n": 4,
        "wins": 1,
        "losses": 1,
        "ties": 1,
        "position_inconsistent": 1,
        "invalid_verdicts": 1,
    }
    assert summary["win_rate"] == pytest.approx(1 / 3)
    assert summary["cost_usd"] is None  # no prices configured


def test_api_key_reaches_the_judge_but_nothing_written_or_logged(judge_server, tmp_path, monkeypatch, capsys, caplog):
    script, url = judge_server
    monkeypatch.setenv("TUNESMITH_JUDGE_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # openai and httpx log requests at DEBUG
    suite = get_suite("judge", _config(url))
    rows = [_row(0, "valid answer"), _row(1, "junk answer"), _row(2, "GOOD x", baseline="y")]
    scores = suite.score(rows)
    write_jsonl(tmp_path / "scores.jsonl", scores)
    write_json(tmp_path / "summary.json", suite.summarize(scores))
    print(suite.summarize(scores), scores)
    assert script.auth == {f"Bearer {SECRET}"}  # the key was really used
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in caplog.text
    assert caplog.text  # the debug logs were captured, so the check above saw them
    written = list(tmp_path.rglob("*"))
    assert len(written) == 2
    for path in written:
        assert SECRET not in path.read_text()
    assert SECRET not in repr(vars(suite.config))


def test_refused_model_stops_with_a_clear_error(monkeypatch):
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def refuse():
        return JSONResponse({"error": {"message": "The model `nope` does not exist"}}, status_code=404)

    monkeypatch.setenv("TUNESMITH_JUDGE_API_KEY", SECRET)
    with running(app) as url:
        suite = get_suite("judge", _config(f"{url}/v1"))
        with pytest.raises(JudgeError, match="--judge-model") as e:
            suite.score([_row(0, "x")])
    assert SECRET not in str(e.value)


def test_retries_give_up_into_an_invalid_verdict():
    app = FastAPI()
    calls = []

    @app.post("/v1/chat/completions")
    async def always_busy():
        calls.append(1)
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)

    with running(app) as url:
        suite = get_suite("judge", _config(f"{url}/v1", max_retries=2))
        [score] = suite.score([_row(0, "x")])
    assert len(calls) == 3  # one try and two retries
    assert score["valid"] is False and score["reason"] == "request_failed" and "503" in score["error"]
    assert suite.summarize([score])["invalid_reasons"] == {"request_failed": 1}


def test_rubric_file_and_errors(tmp_path):
    path = tmp_path / "rubric.yaml"
    path.write_text("correctness:\n  1: wrong\n  5: right\nbrevity: short answers score high\n")
    assert load_rubric(path) == {"correctness": "1: wrong 5: right", "brevity": "short answers score high"}
    assert load_rubric(None) == DEFAULT_RUBRIC
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="rubric.yaml"):
        load_rubric(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_rubric(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="judge.model"):
        get_suite("judge", EvalConfig())


def test_custom_rubric_criteria_are_asked_and_checked(judge_server, tmp_path):
    script, url = judge_server
    path = tmp_path / "rubric.yaml"
    path.write_text("accuracy: right or wrong\ntone: polite\n")
    suite = get_suite("judge", _config(url, rubric=str(path)))
    [score] = suite.score([_row(0, "valid answer")])
    assert score["scores"] == {"accuracy": 4, "tone": 3}
    system = script.requests[0]["messages"][0]["content"]
    assert "- accuracy: right or wrong" in system and "format_compliance" not in system


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"winner": "A"}', {"winner": "A"}),
        ('Verdict:\n```json\n{"winner": "B"}\n```\nThanks.', {"winner": "B"}),
        ('I pick {"winner": "tie"} overall.', {"winner": "tie"}),
    ],
)
def test_parse_json_object_tolerates_prose_and_fences(text, expected):
    assert parse_json_object(text) == expected


def test_parse_json_object_rejects_non_objects():
    for text in ("", "[1, 2]", "winner: A", "{not json}"):
        with pytest.raises(ValueError):
            parse_json_object(text)
