"""Benchmark: batched generation (`tunesmith.evaluate.generate.generate`) against calling
`model.generate` one example at a time, same model, same prompts, same greedy outputs.

    .venv/bin/python bench/generate.py                         # small and medium models, batch 16
    .venv/bin/python bench/generate.py --models small --prompts 32 --new-tokens 32 --threads 2

Models: `tunesmith.models.tiny` presets (`small` ~15.7M-parameter Llama, `medium` ~107M), built once
and cached under $TMPDIR/tunesmith-bench-generate. Prompts: the text-to-SQL example's held-out-style
prompts (schema system prompt + question, ~200-260 tokens), rendered with the model's chat template.
Random weights never emit the end-of-turn token, so every answer runs to `--new-tokens`: both
contenders generate exactly the same number of tokens, and the comparison is of throughput alone.

Contenders, in this one process, fp32, on the GPU when there is one (else the CPU):
  sequential  for each prompt: tokenizer -> model.generate(greedy, KV cache), batch of one, no padding
  batched     generate(model, tokenizer, prompts, GenerationConfig(batch_size=B)): left-padded
              batches of B, prompts sorted by length, KV cache, greedy
Checked: every answer's token ids are identical between the two (asserted; the script exits 1 if not).
Printed: generated tokens per second of each, and batched/sequential. The machine is shared:
compare the ratio of one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WORK = Path(tempfile.gettempdir()) / "tunesmith-bench-generate"


def build_model(preset: str) -> Path:
    from tunesmith.examples.text2sql import example_texts
    from tunesmith.models.tiny import build_tiny_model

    path = WORK / f"model-{preset}"
    if not (path / "config.json").is_file():
        build_tiny_model(path, preset=preset, texts=example_texts(), seed=0)
    return path


def prompts(n: int) -> list[list[dict]]:
    from tunesmith.evaluate.generate import prompt_messages
    from tunesmith.examples.text2sql import generate_conversations, write_database

    db = write_database(WORK / "shop.sqlite")
    rows = [r for r in generate_conversations(db, n=n * 2, flaw_rate=0.0, seed=1) if isinstance(r, dict)]
    return [prompt_messages(r["messages"]) for r in rows[:n]]


def sequential(model, tokenizer, batch: list, new_tokens: int, stops: list[int]) -> tuple[list[list[int]], float]:
    import torch

    from tunesmith.evaluate.generate import render_prompt

    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for p in batch:
            ids = tokenizer(render_prompt(p, tokenizer), add_special_tokens=False, return_tensors="pt").to(model.device)
            gen = model.generate(
                **ids,
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = gen[0, ids["input_ids"].shape[1] :].tolist()
            end = next((k for k, t in enumerate(new) if t in stops), len(new))
            out.append(new[:end])
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WORK / "results.json")
    args = parser.parse_args()

    import torch

    from tunesmith.config import GenerationConfig
    from tunesmith.evaluate.generate import generate, load_for_generation
    from tunesmith.evaluate.stops import stop_token_ids

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    batch = prompts(args.prompts)
    results, failed = [], False
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    print(f"{args.prompts} prompts, {args.new_tokens} new tokens each, batch {args.batch_size}, {device}")
    print(
        f"{'model':8} {'params':>8} {'prompt tok':>10} {'sequential tok/s':>17} {'batched tok/s':>14} {'ratio':>6} same"
    )
    for preset in args.models.split(","):
        model, tokenizer = load_for_generation(build_model(preset))
        stops = stop_token_ids(tokenizer, model.generation_config)
        config = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
        generate(model, tokenizer, batch[:2], config, progress=False)  # warm-up: first-call allocations
        seq_ids, seq_s = sequential(model, tokenizer, batch, args.new_tokens, stops)
        start = time.perf_counter()
        batched = generate(model, tokenizer, batch, config, progress=False)
        bat_s = time.perf_counter() - start
        same = [b.token_ids for b in batched] == seq_ids
        failed |= not same
        tokens = sum(len(b.token_ids) + b.stopped for b in batched)
        seq_tokens = sum(len(s) for s in seq_ids)
        prompt_len = sum(len(tokenizer(tokenizer.apply_chat_template(p, tokenize=False))["input_ids"]) for p in batch)
        row = {
            "model": preset,
            "parameters": sum(p.numel() for p in model.parameters()),
            "prompts": len(batch),
            "mean_prompt_tokens": prompt_len / len(batch),
            "new_tokens": tokens,
            "sequential_tokens_per_s": seq_tokens / seq_s,
            "batched_tokens_per_s": tokens / bat_s,
            "ratio": (tokens / bat_s) / (seq_tokens / seq_s),
            "identical_outputs": same,
            "batch_size": args.batch_size,
            "threads": args.threads,
        }
        results.append(row)
        print(
            f"{preset:8} {row['parameters'] / 1e6:7.1f}M {row['mean_prompt_tokens']:10.0f} "
            f"{row['sequential_tokens_per_s']:17.1f} {row['batched_tokens_per_s']:14.1f} {row['ratio']:5.1f}x {same}"
        )
        del model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")
    if failed:
        print("FAILED: batched and sequential greedy outputs differ", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
