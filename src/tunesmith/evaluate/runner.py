"""`tunesmith eval RUN_DIR`: answer the held-out prompts with the tuned and the base model, score
both with the same suites, and say what changed.

    result = evaluate_run("runs/text2sql-smollm2")          # reads RUN_DIR/config.yaml
    result.summary["models"]["tuned"]["scores"]["sql"]["execution_accuracy"]

Held-out prompts come from the split stage's file (`RUN_DIR/data/split/<split>.jsonl`), else from
the config's `data.test_path` / `data.val_path`. Each conversation is cut before its last assistant
turn (the prompt); that turn is the reference. Writes, atomically, `RUN_DIR/eval/tuned.jsonl`,
`base.jsonl` and `summary.json` (layout in `tunesmith.evaluate`).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.config import Config, ConfigError, EvalConfig, load_config
from tunesmith.data.schema import DataError
from tunesmith.evaluate.generate import (
    Generation,
    generate,
    generate_vllm,
    load_base,
    load_tuned,
    prompt_messages,
    reference_answer,
    unstopped_finding,
    vllm_usable,
)
from tunesmith.evaluate.jsonl import json_objects
from tunesmith.evaluate.suites import ScoreRow, get_suite
from tunesmith.runs import (
    CONFIG_FILE,
    DATA_DIR,
    EVAL_DIR,
    EVAL_SUMMARY_FILE,
    FINAL_DIR,
    SPLIT_DIR,
    SPLIT_FILES,
    write_json,
    write_jsonl,
)

TUNED_FILE = "tuned.jsonl"  # in EVAL_DIR
BASE_FILE = "base.jsonl"
_ROW_FORMAT_KEYS = ("id", "messages", "tools")  # everything else in a split row is metadata


@dataclass
class Example:
    """One held-out example: the prompt messages, the reference answer, the rest of its row."""

    id: str
    prompt: list[dict[str, Any]]
    reference: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def score_row(self, output: str) -> ScoreRow:
        return ScoreRow(
            id=self.id,
            prompt=self.prompt,
            prediction=output,
            reference=self.reference,
            db=self.metadata.get("db") if isinstance(self.metadata.get("db"), str) else None,
            extra=self.metadata,
        )


@dataclass
class EvalResult:
    eval_dir: Path
    summary: dict[str, Any]  # what summary.json holds
    rows: dict[str, list[dict[str, Any]]]  # "tuned" / "base" -> the rows of <model>.jsonl


# ---- inputs ------------------------------------------------------------------------------------------------


def split_path(run_dir: str | Path, config: Config, split: str) -> Path:
    """The held-out file to evaluate on; ConfigError (exit 2) saying what to do when there is none."""
    written = Path(run_dir) / DATA_DIR / SPLIT_DIR / SPLIT_FILES[split]
    if written.is_file():
        return written
    configured = getattr(config.data, f"{split}_path", None)  # data.test_path / data.val_path (split stage)
    if configured and Path(configured).is_file():
        return Path(configured)
    raise ConfigError(
        f"no held-out {split} set for {run_dir}: {written} does not exist"
        + (f" and data.{split}_path={configured} is missing" if configured else f" and data.{split}_path is not set")
        + f". Split the data first (`tunesmith data split DATA --out DIR`, then data.{split}_path=DIR/{SPLIT_FILES[split]}),"
        " or point data.test_path at a messages JSONL file of held-out examples."
    )


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Messages JSONL rows as Examples; DataError with file:line for a row that cannot be one."""
    examples: list[Example] = []
    for line_no, row in json_objects(path):
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(path, "expected an object with a `messages` list (OpenAI format)", row=line_no)
        prompt = prompt_messages(messages)
        if not prompt:
            raise DataError(path, "nothing to answer: the conversation starts with the assistant", row=line_no)
        metadata = {k: v for k, v in row.items() if k not in _ROW_FORMAT_KEYS}
        examples.append(Example(str(row.get("id", line_no)), prompt, reference_answer(messages), metadata))
        if limit is not None and len(examples) >= limit:
            break
    return examples


# ---- scoring (shared with `eval score`) ------------------------------------------------------------------


def score_rows(
    rows: Sequence[ScoreRow], suites: dict[str, Any]
) -> tuple[list[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Per row {suite: score}, and {suite: summary}."""
    per_row: list[dict[str, dict[str, Any]]] = [{} for _ in rows]
    summaries: dict[str, dict[str, Any]] = {}
    for name, suite in suites.items():
        scores = suite.score(rows)
        for k, s in enumerate(scores):
            per_row[k][name] = s
        summaries[name] = suite.summarize(scores)
    return per_row, summaries


def build_suites(config: EvalConfig) -> dict[str, Any]:
    """The configured suites, built once (a bad option fails here, before any model loads)."""
    try:
        return {name: get_suite(name, config) for name in config.suites}
    except KeyError as e:
        raise ConfigError(f"eval.suites: {e.args[0]}") from None
    except ValueError as e:  # a suite's own option, e.g. an unreadable JSON Schema
        raise ConfigError(str(e)) from None


# ---- the stage ----------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str | None = None,
    base: bool | None = None,
    limit: int | None = None,
    config: Config | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> EvalResult:
    """Generate with the run's tuned model (and, unless `base=False`, its base model) on the
    held-out split, score with `config.eval.suites`, write RUN_DIR/eval, print base vs tuned.
    `split`, `base`, `limit` override the config's eval section."""
    run_dir = Path(run_dir)
    console = console or Console(highlight=False)
    if config is None:
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{run_dir}: not a run directory (no {CONFIG_FILE}); give the directory `tunesmith train` wrote"
            )
        config = load_config(run_dir / CONFIG_FILE)
    updates = {k: v for k, v in {"split": split, "base": base, "limit": limit}.items() if v is not None}
    ev = EvalConfig.model_validate({**config.eval.model_dump(), **updates})  # validated: --split must be test or val
    suites = build_suites(ev)
    source = split_path(run_dir, config, ev.split)
    examples = read_examples(source, ev.limit)
    if not examples:
        raise DataError(source, "no examples to evaluate")
    console.print(
        f"evaluating {len(examples)} {ev.split} examples from {source}: suites {', '.join(suites) or '(none)'}, "
        f"{'greedy' if ev.generation.temperature == 0 else f'temperature {ev.generation.temperature}'}, "
        f"max_new_tokens {ev.generation.max_new_tokens}"
    )
    findings: list[dict[str, Any]] = []
    if not suites:
        findings.append(
            {
                "code": "no_suites",
                "message": "eval.suites is empty: answers were generated but not scored",
                "advice": "set eval.suites, e.g. [sql] with eval.sql.db, or [exact]",
            }
        )
    models: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    eval_dir = run_dir / EVAL_DIR
    for name in ("tuned", "base") if ev.base else ("tuned",):
        path = str(run_dir / FINAL_DIR) if name == "tuned" else config.model.name_or_path
        outputs = _answers(name, run_dir, config, [e.prompt for e in examples], ev, progress)
        per_row, summaries = score_rows([e.score_row(o.text) for e, o in zip(examples, outputs, strict=True)], suites)
        rows[name] = [_record(e, o, s) for e, o, s in zip(examples, outputs, per_row, strict=True)]
        models[name] = {"path": path, "unstopped": sum(not o.stopped for o in outputs), "scores": summaries}
        finding = unstopped_finding(outputs, ev.generation.max_new_tokens, model=name)
        if finding:
            findings.append(finding)
        write_jsonl(eval_dir / (TUNED_FILE if name == "tuned" else BASE_FILE), rows[name])
    summary: dict[str, Any] = {
        "split": ev.split,
        "source": str(source),
        "n": len(examples),
        "suites": list(suites),
        "generation": ev.generation.model_dump(),
        "models": models,
        "findings": findings,
    }
    regression = regression_hook(run_dir, config, console)
    if regression is not None:
        summary["regression"] = regression
    write_json(eval_dir / EVAL_SUMMARY_FILE, summary)
    result = EvalResult(eval_dir, summary, rows)
    print_summary(result, console)
    return result


def _answers(
    name: str, run_dir: Path, config: Config, prompts: list[Any], ev: EvalConfig, progress: bool
) -> list[Generation]:
    """One model's answers: vLLM where it is installed and a GPU is present, transformers otherwise."""
    if vllm_usable():
        return _answers_vllm(name, run_dir, config, prompts, ev)
    model, tokenizer = load_tuned(run_dir, config) if name == "tuned" else load_base(config)
    try:
        return generate(model, tokenizer, prompts, ev.generation, progress=progress, description=name)
    finally:
        del model, tokenizer
        gc.collect()


def _answers_vllm(name: str, run_dir: Path, config: Config, prompts: list[Any], ev: EvalConfig) -> list[Generation]:
    # Untested here (no GPU, no vLLM): an adapter in final/ is served on the base through LoRARequest.
    from tunesmith.data.template import load_tokenizer

    final = run_dir / FINAL_DIR
    adapter = name == "tuned" and (final / "adapter_config.json").is_file()
    model_dir = final if name == "tuned" and not adapter else Path(config.model.name_or_path)
    tokenizer_dir = final if name == "tuned" else model_dir
    chat_template = None if name == "tuned" else config.model.chat_template
    tokenizer = load_tokenizer(tokenizer_dir, chat_template=chat_template)
    return generate_vllm(model_dir, tokenizer, prompts, ev.generation, adapter_dir=final if adapter else None)


def regression_hook(run_dir: Path, config: Config, console: Console) -> dict[str, Any] | None:
    """The catastrophic-forgetting check (`tunesmith.evaluate.regression`): base and tuned compared on
    general prompts unrelated to the task. Its result goes into summary.json under `regression`;
    None (the check is off, `eval.regression.enabled: false`) leaves the key out."""
    from tunesmith.evaluate.regression import regression_check, verdict

    ev = config.eval
    if not ev.regression.enabled:
        return None
    tuned, tokenizer = load_tuned(run_dir, config)
    base, _ = load_base(config)
    try:

        def answers(model: Any, prompts: list[list[dict[str, Any]]]) -> list[str]:
            return [g.text for g in generate(model, tokenizer, prompts, ev.generation, progress=False)]

        result = regression_check(tuned, tokenizer, ev, base=base, generate=answers)
    finally:
        del tuned, base
        gc.collect()
    for finding in result["findings"]:
        console.print(f"[yellow]{finding}[/]")
    if not result["findings"]:
        console.print(
            f"regression check: general-prompt loss {result['base_loss']:.3f} -> {result['tuned_loss']:.3f} nats/token "
            f"({result['loss_change']:+.1%}) on {result['n']} prompts: {verdict(result)}"
        )
    return result


def _record(example: Example, output: Generation, scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": example.id,
        "prompt": example.prompt,
        "output": output.text,
        "reference": example.reference,
        "stopped": output.stopped,
        "new_tokens": output.new_tokens,
        "scores": scores,
        "metadata": example.metadata,
    }


# ---- printing ------------------------------------------------------------------------------------------------


def _metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"}


def print_summary(result: EvalResult, console: Console) -> None:
    """Base vs tuned side by side, per suite and metric, with the difference; then the findings."""
    models = result.summary["models"]
    has_base = "base" in models
    table = Table(title=f"evaluation on {result.summary['n']} {result.summary['split']} examples")
    table.add_column("suite")
    table.add_column("metric")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    if has_base:
        table.add_column("Δ", justify="right")
    for suite, tuned_summary in models["tuned"]["scores"].items():
        base_metrics = _metrics(models["base"]["scores"][suite]) if has_base else {}
        for metric, value in _metrics(tuned_summary).items():
            cells = [suite, metric]
            if has_base:
                b = base_metrics.get(metric)
                cells += [_fmt(b), _fmt(value), _fmt(value - b, signed=True) if b is not None else ""]
            else:
                cells.append(_fmt(value))
            table.add_row(*cells)
    n = result.summary["n"]
    cells = ["generation", "unstopped"]
    cells += [f"{models['base']['unstopped']}/{n}"] if has_base else []
    cells += [f"{models['tuned']['unstopped']}/{n}"] + ([""] if has_base else [])
    table.add_row(*cells)
    console.print(table)
    for suite, tuned_summary in models["tuned"]["scores"].items():
        if tuned_summary.get("errors"):
            line = f"  {suite} errors (tuned): {tuned_summary['errors']}"
            if has_base:
                line += f"; base: {models['base']['scores'][suite].get('errors')}"
            console.print(escape(line))
    for finding in result.summary["findings"]:
        console.print(f"[yellow]finding[/] {escape(finding['message'])}\n  {escape(finding.get('advice', ''))}")
    console.print(f"outputs and scores: {result.eval_dir}")


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not signed:
        return str(value)
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def print_examples(result: EvalResult, console: Console, k: int = 3) -> None:
    """The first `k` examples, base vs tuned answer and reference (for the demo and the README)."""
    tuned = result.rows.get("tuned", [])
    base = {r["id"]: r for r in result.rows.get("base", [])}
    for row in tuned[:k]:
        question = next((m.get("content") for m in reversed(row["prompt"]) if m.get("role") == "user"), "")
        console.print(f"[bold]{escape(row['id'])}[/] {escape(str(question))}")
        if row["id"] in base:
            console.print(f"  base:      {escape(base[row['id']]['output'])}")
        console.print(f"  tuned:     {escape(row['output'])}")
        console.print(f"  reference: {escape(str(row['reference']))}")


# The metric that answers "did it work" for each suite, in the order it is read.
HEADLINE_METRICS = {
    "sql": ("execution_success_rate", "execution_accuracy"),
    "json": ("parse_rate", "schema_valid_rate", "field_accuracy"),
    "code": ("pass_rate",),
    "exact": ("accuracy",),
    "regex": ("accuracy",),
    "contains": ("accuracy",),
}


def headline(summary: dict[str, Any]) -> list[str]:
    """One line per headline metric: 'sql execution_accuracy: base 0/40 (0%) -> tuned 17/40 (42%)'.
    Rates are shown as counts of `n` too, so a reader sees how few examples a percentage rests on."""
    models, n = summary["models"], summary["n"]
    lines = []
    for suite, tuned in models["tuned"]["scores"].items():
        for metric in HEADLINE_METRICS.get(suite, ()):
            if tuned.get(metric) is None:
                continue
            parts = [
                f"{name} {_rate(models[name]['scores'][suite].get(metric), n)}"
                for name in ("base", "tuned")
                if name in models
            ]
            lines.append(f"{suite} {metric}: {' -> '.join(parts)}")
    return lines


def _rate(value: float | None, n: int) -> str:
    if value is None:
        return "-"
    return f"{round(value * n)}/{n} ({value:.0%})"


def print_headline(result: EvalResult, console: Console) -> None:
    """The before/after numbers, last thing on the screen (the demo ends with these)."""
    for line in headline(result.summary):
        console.print(f"[bold]{escape(line)}[/]")
