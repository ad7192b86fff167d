"""Execution accuracy of fine-tunes on the built-in text-to-SQL example: choose the demo's recipe by measurement.

    .venv/bin/python bench/text2sql_accuracy.py --try "" --try "train.effective_batch=8 train.epochs=0.3"
    .venv/bin/python bench/text2sql_accuracy.py --split-dir runs/text2sql-smollm2/data/split --limit 0 --try ...

Each `--try` is one setting: whitespace-separated config overrides applied on top of
`examples/text2sql/config.yaml` (`""` is the demo's recipe as shipped). Every setting trains
through `tunesmith.train.recipe.train` on the same group-aware split and is scored by
`tunesmith.evaluate.runner.evaluate_run`, the code `tunesmith eval` runs: the `sql` suite on the
example's SQLite database (read-only), and the regression check (loss on the shipped general
prompts, tuned vs base). So a setting's numbers are exactly what the demo would print.

The split: `--split-dir` reuses a split stage's output (train/val/test.jsonl, e.g. a demo run's
`runs/text2sql-smollm2/data/split`), so a sweep on another machine (a GPU) scores the same held-out
questions as the demo; without it the split stage runs once on the example's data. `--limit`
sets how many test questions are scored (the demo: 40; 0 = all ~270, for tighter comparisons).
One JSON line per setting goes to `--out`. Times are wall clock on whatever machine this runs on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EXAMPLE = ROOT / "examples" / "text2sql"
WORK = Path(tempfile.gettempdir()) / "tunesmith-bench-text2sql"


def split_once() -> Path:
    """The data stages (check, clean, split) of `tunesmith run` on the example, once; their split dir."""
    from tunesmith.config import load_config
    from tunesmith.pipeline import default_stages, run_pipeline
    from tunesmith.runs import DATA_DIR, SPLIT_DIR

    config = load_config(EXAMPLE / "config.yaml", ["name=split", f"runs_dir={WORK / 'runs'}"])
    split_dir = config.run_dir / DATA_DIR / SPLIT_DIR
    if not (split_dir / "test.jsonl").is_file():
        run_pipeline(config, stages=[s for s in default_stages() if s.name in ("check", "clean", "split")])
    return split_dir


def run_setting(label: str, overrides: list[str], split_dir: Path) -> dict[str, Any]:
    from tunesmith.config import load_config
    from tunesmith.evaluate.runner import evaluate_run
    from tunesmith.train.recipe import train

    name = "bench-" + hashlib.sha1(label.encode()).hexdigest()[:10]
    config = load_config(
        EXAMPLE / "config.yaml",
        [
            f"name={name}",
            f"runs_dir={WORK / 'runs'}",
            f"data.path={split_dir / 'train.jsonl'}",
            f"data.val_path={split_dir / 'val.jsonl'}",
            f"data.test_path={split_dir / 'test.jsonl'}",
            "train.resume=never",
            "train.report_to=[]",
            f"eval.sql.db={WORK / 'shop.sqlite'}",
            *overrides,
        ],
    )
    t0 = time.time()
    trained = train(config)
    train_s = time.time() - t0
    metrics = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    t1 = time.time()
    result = evaluate_run(config.run_dir, base=False, config=config, progress=False)
    sql = result.summary["models"]["tuned"]["scores"]["sql"]
    reg = result.summary.get("regression", {})
    head = [r["scores"]["sql"]["correct"] for r in result.rows["tuned"][:40]]
    return {
        "setting": label,
        "overrides": overrides,
        "steps": trained.steps,
        "train_s": round(train_s, 1),
        "eval_s": round(time.time() - t1, 1),
        "trained_tokens": max((m.get("trained_tokens", 0) for m in metrics), default=0),  # a running total
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in metrics if "tokens_per_s" in m),
        "best_val_loss": trained.best_val_loss,
        "n": sql["n"],
        "execution_success_rate": sql["execution_success_rate"],
        "execution_accuracy": sql["execution_accuracy"],
        "execution_accuracy_first40": sum(head) / len(head),
        "regression_loss_change": reg.get("loss_change"),
        "regression_p": reg.get("p_value"),
        "regression_flagged": bool(reg.get("findings")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--try", dest="tries", action="append", default=[], help="overrides of one setting ('' = as shipped)"
    )
    p.add_argument("--split-dir", type=Path, help="reuse a split stage's train/val/test.jsonl")
    p.add_argument("--limit", type=int, help="test questions scored (default: the config's 40; 0 = all)")
    p.add_argument("--out", type=Path, default=WORK / "results.jsonl")
    args = p.parse_args()

    from tunesmith.examples.text2sql import write_database
    from tunesmith.train.guards import TrainingInterrupted

    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "shop.sqlite").exists():
        write_database(WORK / "shop.sqlite")
    split_dir = args.split_dir or split_once()
    if args.split_dir:
        # The files are a split stage's output, whose leakage report was written when it ran; checking
        # again would only re-embed every row (and need the embedder on a machine that may lack it).
        import tunesmith.split.training as training

        training.check_leakage = lambda *a, **k: _NoLeak()
    for label in args.tries or [""]:
        try:
            limit = [] if args.limit is None else [f"eval.limit={args.limit or 'null'}"]
            row = run_setting(label or "(as shipped)", [*limit, *shlex.split(label)], split_dir)
        except TrainingInterrupted:  # Ctrl-C / SIGTERM: the sweep stops (the run saved its checkpoint)
            raise
        except Exception as e:  # a sweep goes on to the next setting; the failure is recorded, not hidden
            traceback.print_exc()
            row = {"setting": label or "(as shipped)", "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(row), flush=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class _NoLeak:
    leaked = 0
    fraction = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"skipped": "files from a split stage (bench/text2sql_accuracy.py --split-dir)"}


if __name__ == "__main__":
    main()
