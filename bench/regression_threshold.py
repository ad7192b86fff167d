"""Where should the regression check flag "possible catastrophic forgetting"? Measure it.

Takes a real pretrained model (default: stories260K, karpathy's llama2.c TinyStories model from
../shared/fixtures, converted; or any transformers directory with --model), measures its loss on the
shipped regression prompts, then fine-tunes fresh copies of it and measures again at a few steps:

* `self`: LoRA on the model's own sampled text, wrapped as chat answers. It teaches nothing the
  model does not already know: the change any fine-tune causes, the noise floor;
* `alpaca`: LoRA on Alpaca instructions (general English, like the prompts);
* `sql`: LoRA on the text-to-SQL example, an unrelated task (what `tunesmith train` does);
* `sql-hot`: the same at 10x the learning rate: the overtrained case;
* `sql-full`: full fine-tuning on the text-to-SQL example.

For each it prints the relative change in mean loss per reference token, the bootstrap standard
error of that change over the prompts (prompt-sampling noise), and the one-sided Wilcoxon p-value
the regression check uses. Ratios only: the machine is shared, timings are not the point.

    PYTHONPATH=src .venv/bin/python bench/regression_threshold.py                 # stories260K, ~2 min
    PYTHONPATH=src .venv/bin/python bench/regression_threshold.py --model DIR --lr 2e-4 --batch 4

Measured (stories260K, LoRA r=16 all-linear, lr 3e-3 = the LoRA rate tests/integration uses on this
model, batch 16, 2 shared cores): see bench/README.md "regression_threshold.py".
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from tunesmith.config import LoraConfig, TrainConfig
from tunesmith.data.schema import Conversation, Source
from tunesmith.data.template import TemplateError, encode_batch, load_tokenizer
from tunesmith.evaluate.regression import _mean_loss, _wilcoxon_greater, load_prompts, reference_losses
from tunesmith.models.adapters import wrap_model
from tunesmith.models.load import load_model
from tunesmith.train.batching import collate
from tunesmith.train.loss import trained_token_loss

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "data" / "alpaca_tiny.json"


def sql_rows(n: int) -> list[Conversation]:
    from tunesmith.examples.text2sql import generate_conversations, generate_database

    with tempfile.TemporaryDirectory() as tmp:
        db = generate_database(Path(tmp) / "shop.sqlite")
        rows = generate_conversations(db, n=n, flaw_rate=0.0)
    # Without the schema system prompt: with it, rows pass stories260K's 512-token context.
    return [
        Conversation([m for m in r["messages"] if m["role"] != "system"], Source("sql", i))
        for i, r in enumerate(rows)
        if isinstance(r, dict)
    ]


def self_rows(model_dir: str, tokenizer, n: int = 64) -> list[Conversation]:
    """The base model's own samples (temperature 1 from BOS), as answers to one fixed question."""
    model = load_model(model_dir, dtype="float32")
    torch.manual_seed(0)
    start = torch.tensor([[tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0]] * n)
    with torch.no_grad():
        out = model.generate(start, do_sample=True, temperature=1.0, max_new_tokens=80, pad_token_id=0)
    texts = [tokenizer.decode(row[1:], skip_special_tokens=True).strip() for row in out]
    return [
        Conversation(
            [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": t}], Source("self", i)
        )
        for i, t in enumerate(texts)
        if t
    ]


def alpaca_rows() -> list[Conversation]:
    out = []
    for i, r in enumerate(json.loads(ALPACA.read_text())):
        question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": r["output"]}]
        out.append(Conversation(messages, Source("alpaca", i)))
    return out


def change(base, tuned) -> tuple[float, float, float]:
    """(relative change of the mean loss, its bootstrap standard error over prompts, Wilcoxon p)."""
    rel = _mean_loss(tuned) / _mean_loss(base) - 1
    rng = random.Random(0)
    boots = []
    for _ in range(1000):
        idx = [rng.randrange(len(base)) for _ in base]
        boots.append(_mean_loss([tuned[i] for i in idx]) / _mean_loss([base[i] for i in idx]) - 1)
    mean = sum(boots) / len(boots)
    se = (sum((b - mean) ** 2 for b in boots) / (len(boots) - 1)) ** 0.5
    deltas = [t / n - b / n for (b, n), (t, _) in zip(base, tuned)]
    return rel, se, _wilcoxon_greater(deltas)


def finetune(model_dir, tokenizer, rows, method, lr, steps, batch, checkpoints, prompts, base_losses, max_len):
    torch.manual_seed(0)
    model = load_model(model_dir, dtype="float32")
    model = wrap_model(model, TrainConfig(method=method, lr=lr), LoraConfig(train_stop_tokens=False))
    encoded = [e for e in encode_batch(rows, tokenizer) if not isinstance(e, TemplateError)]
    encoded = [e for e in encoded if len(e.input_ids) <= max_len]
    if not encoded:
        raise SystemExit(f"no training row fits in --max-len {max_len} tokens")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(0)
    rng.shuffle(encoded)
    results = []
    for step in range(1, steps + 1):
        examples = [encoded[(step * batch + k) % len(encoded)] for k in range(batch)]
        b = collate(examples, tokenizer.pad_token_id or 0)
        model.train()
        loss, _ = trained_token_loss(model, b, normalizer=sum(e.n_trained for e in examples))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step in checkpoints:
            rel, se, p = change(base_losses, reference_losses(model, tokenizer, prompts))
            results.append({"step": step, "train_loss": loss.item(), "change": rel, "se": se, "p": p})
            print(
                f"  step {step:4d}  train loss {float(loss):.3f}  regression change {rel:+.1%} (SE {se:.1%}, p={p:.2g})",
                flush=True,
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="transformers directory (default: stories260K, converted)")
    ap.add_argument("--lr", type=float, default=3e-3, help="LoRA learning rate (sql-hot: 10x; sql-full: 1/10)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--runs", default="self,alpaca,sql,sql-hot,sql-full")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        from tunesmith.models.llama2c import convert_llama2c

        stories = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "models" / "stories260K"
        model_dir = str(
            convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", Path(tempfile.mkdtemp()) / "m")
        )
    tokenizer = load_tokenizer(model_dir)
    prompts = load_prompts()
    base = load_model(model_dir, dtype="float32")
    t = time.time()
    base_losses = reference_losses(base, tokenizer, prompts)
    print(f"base: {_mean_loss(base_losses):.3f} nats/token on {len(prompts)} prompts ({time.time() - t:.1f} s)")
    del base
    checkpoints = {max(1, args.steps // 4), args.steps}  # each measurement is 50 forward passes
    sql = sql_rows(400)
    runs = {
        "self": (lambda: self_rows(model_dir, tokenizer), "lora", args.lr),
        "alpaca": (alpaca_rows, "lora", args.lr),
        "sql": (lambda: sql, "lora", args.lr),
        "sql-hot": (lambda: sql, "lora", args.lr * 10),
        "sql-full": (lambda: sql, "full", args.lr / 10),
    }
    out = {"model": model_dir, "base_loss": _mean_loss(base_losses), "runs": {}}
    for name in args.runs.split(","):
        data, method, lr = runs[name]
        print(f"{name}: {method} lr={lr:g} batch={args.batch} steps={args.steps}", flush=True)
        t = time.time()
        out["runs"][name] = finetune(
            model_dir,
            tokenizer,
            data(),
            method,
            lr,
            args.steps,
            args.batch,
            checkpoints,
            prompts,
            base_losses,
            args.max_len,
        )
        print(f"  ({time.time() - t:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
