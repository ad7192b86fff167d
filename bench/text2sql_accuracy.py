"""Execution accuracy of a fine-tune on the built-in text-to-SQL example: choose the demo's recipe by measurement.

    .venv/bin/python bench/text2sql_accuracy.py --rows 480 --epochs 1 --lr 1e-3            # one setting
    .venv/bin/python bench/text2sql_accuracy.py --holdout template --rows 480 --base       # also the base model

Clean rows of `examples/text2sql/conversations.jsonl` (no `flaw` tag) are split into a held-out
test set (`--holdout random`: `--test` rows drawn at random, their templates also seen in training;
`--holdout template`: whole question templates held out until `--test` rows are reached, so every
test question is of a kind never trained on) and a training file of `--rows` rows drawn from the
rest. `tunesmith.train.recipe.train` trains on it with the example's config plus the options given
here; then the base model (`--base`) and the tuned one answer the test questions greedily (batched,
left-padded), and each answer's SQL runs against the example's SQLite database (read-only): it is
right when its result rows equal the reference query's as a multiset (as a list when the reference
has ORDER BY), values normalised (1 == 1.0, floats to 6 digits). This is a stand-in for the `sql`
eval suite, kept here so the recipe's numbers can be reproduced. One JSON line per run is appended
to `--out`. The machine is shared: train times are wall clock under whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EXAMPLE = ROOT / "examples" / "text2sql"
WORK = Path(tempfile.gettempdir()) / "tunesmith-bench-text2sql"


def clean_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("flaw") in (None, "none-hard-negative"):
            rows.append(row)
    return rows


def split(rows: list[dict[str, Any]], holdout: str, n_test: int, n_train: int, seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    rows = rows[:]
    rng.shuffle(rows)
    if holdout == "random":
        test, rest = rows[:n_test], rows[n_test:]
    else:  # whole templates, drawn at random, until n_test rows; the test set keeps n_test of them
        templates = sorted({r["template"] for r in rows})
        rng.shuffle(templates)
        held: set[str] = set()
        for t in templates:
            if sum(r["template"] in held for r in rows) >= n_test:
                break
            held.add(t)
        test = [r for r in rows if r["template"] in held][:n_test]
        rest = [r for r in rows if r["template"] not in held]
    return rest[:n_train], test


def extract_sql(text: str) -> str:
    fenced = re.search(r"```(?:sql)?\s*(.*?)```", text, re.S | re.I)
    sql = fenced.group(1) if fenced else text
    return sql.strip().split(";")[0].strip()


def _norm(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if value != int(value) else int(value)
    return value


def execute(db: Path, sql: str) -> tuple[list[tuple] | None, str | None]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    deadline = time.monotonic() + 5
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = con.execute(sql).fetchmany(10_000)
        return [tuple(_norm(v) for v in r) for r in rows], None
    except Exception as e:
        return None, type(e).__name__
    finally:
        con.close()


def correct(db: Path, predicted: str, reference: str) -> tuple[bool, bool]:
    """(executes, right)."""
    got, err = execute(db, extract_sql(predicted))
    want, _ = execute(db, reference)
    if err is not None or want is None:
        return False, False
    if re.search(r"\border\s+by\b", reference, re.I):
        return True, got == want
    return True, Counter(got) == Counter(want)


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, conversations: list[list[dict]], batch: int = 16, max_new: int = 128) -> list:
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = [
        tokenizer.eos_token_id,
        *([tokenizer.convert_tokens_to_ids("<|im_end|>")] if "<|im_end|>" in tokenizer.get_vocab() else []),
    ]
    outs: list[str] = []
    for i in range(0, len(conversations), batch):
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations[i : i + batch]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=eos, pad_token_id=pad)
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return outs


def evaluate(model: Any, tokenizer: Any, test: list[dict], db: Path) -> dict[str, Any]:
    prompts = [r["messages"][:-1] for r in test]
    t0 = time.time()
    outputs = generate(model, tokenizer, prompts)
    scores = [correct(db, out, r["messages"][-1]["content"]) for out, r in zip(outputs, test, strict=True)]
    return {
        "n": len(test),
        "exec_success": sum(s[0] for s in scores) / len(test),
        "exec_accuracy": sum(s[1] for s in scores) / len(test),
        "gen_s": round(time.time() - t0, 1),
        "samples": [
            {"q": r["messages"][-2]["content"], "ref": r["messages"][-1]["content"], "out": o, "ok": s[1]}
            for r, o, s in zip(test, outputs, scores, strict=True)
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--holdout", choices=["random", "template"], default="random")
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--rows", type=int, default=480)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method", default="lora")
    p.add_argument("--set", action="append", default=[], help="extra config override, e.g. lora.r=8")
    p.add_argument("--base", action="store_true", help="also evaluate the base model")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=WORK / "results.jsonl")
    args = p.parse_args()

    from peft import PeftModel

    from tunesmith.config import load_config
    from tunesmith.data.template import load_tokenizer
    from tunesmith.examples.text2sql import DB_FILE, write_database
    from tunesmith.models.load import load_model
    from tunesmith.runs import write_jsonl

    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / DB_FILE
    if not db.exists():
        write_database(db)
    train_rows, test = split(clean_rows(EXAMPLE / "conversations.jsonl"), args.holdout, args.test, args.rows, args.seed)
    tag = f"{args.holdout}-{args.method}-n{len(train_rows)}-e{args.epochs}-lr{args.lr:g}" + "".join(
        f"-{s}" for s in args.set
    )
    data = WORK / f"train-{args.holdout}-{len(train_rows)}.jsonl"
    write_jsonl(data, train_rows)
    tokenizer = load_tokenizer(args.model)
    result: dict[str, Any] = {"tag": tag, "holdout": args.holdout, "rows": len(train_rows), "test": len(test)}
    if args.base:
        base = load_model(args.model, dtype="float32").eval()
        result["base"] = evaluate(base, tokenizer, test, db)
        print(f"base: exec {result['base']['exec_success']:.0%} acc {result['base']['exec_accuracy']:.0%}", flush=True)
        del base
    if not args.no_train:
        from tunesmith.train.recipe import train

        overrides = [
            f"model.name_or_path={args.model}",
            f"data.path={data}",
            f"name=bench-{tag}",
            f"runs_dir={WORK / 'runs'}",
            f"train.method={args.method}",
            f"train.lr={args.lr}",
            f"train.epochs={args.epochs}",
            "train.resume=never",
            "train.report_to=[]",
            *args.set,
        ]
        config = load_config(EXAMPLE / "config.yaml", overrides)
        t0 = time.time()
        res = train(config)
        result["train_s"] = round(time.time() - t0, 1)
        result["best_val_loss"] = res.best_val_loss
        model = load_model(args.model, dtype="float32")
        if args.method != "full":
            model = PeftModel.from_pretrained(model, res.final_dir).merge_and_unload()
        else:
            model = load_model(res.final_dir, dtype="float32")
        result["tuned"] = evaluate(model.eval(), tokenizer, test, db)
        print(
            f"{tag}: train {result['train_s']}s, exec {result['tuned']['exec_success']:.0%} "
            f"acc {result['tuned']['exec_accuracy']:.0%}",
            flush=True,
        )
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
