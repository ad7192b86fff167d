"""Micro-benchmark of one training step's fast parts: batching strategy and loss.

    .venv/bin/python bench/train_step.py                       # all variants, ~10 CPU-minutes
    .venv/bin/python bench/train_step.py --only grouped,packed --examples 96

Every variant trains the same examples (LoRA r=16 on a 15M-parameter Llama: 6 layers, hidden 288,
vocab 32k, fp32, 2 threads) and reports non-pad tokens per CPU-second and how much memory one step
on its widest batch takes, with ratios against the first variant. Examples are real conversations
from ../shared/fixtures/data rendered with the TinyLlama chat template, loss on assistant turns.

Variants:
  random      random batches of --micro-batch, padded (what a plain DataLoader does)
  grouped     tunesmith: length-grouped batches (plan_batches + collate), trained_token_loss
  grouped-hf  same batches, the plain `model(**batch, labels=...)` loss
  budget      length-grouped with a token budget (--max-tokens) instead of an example count
  packed      each micro-batch in one row, position_ids restarted per example, no attention mask:
              the only packed form transformers 5 isolates (checked against each example alone)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith.train.batching import IGNORE_INDEX, collate, plan_batches  # noqa: E402
from tunesmith.train.loss import trained_token_loss  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
VARIANTS = ["random", "grouped", "grouped-hf", "budget", "packed"]
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "user"}


def conversations() -> list[list[dict[str, str]]]:
    convs = []
    for name in ["sharegpt_glaive_toolcall.json", "sharegpt_fastchat_dummy.json"]:
        for row in json.loads((FIXTURES / "data" / name).read_text()):
            msgs, last = [], None
            for turn in row["conversations"]:
                role = SHAREGPT_ROLES[turn["from"]]
                if role == last:  # the template needs alternating turns: merge tool results
                    msgs[-1]["content"] += "\n" + turn["value"]
                else:
                    msgs.append({"role": role, "content": turn["value"]})
                last = role
            if msgs and msgs[-1]["role"] == "assistant":
                convs.append(msgs)
    for row in json.loads((FIXTURES / "data" / "alpaca_tiny.json").read_text()):
        prompt = row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")
        convs.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}])
    return convs


def encode(tok, msgs: list[dict[str, str]], max_len: int) -> dict[str, list[int]]:
    """Tokens of the whole conversation; labels on the characters of assistant turns only."""
    text = tok.apply_chat_template(msgs, tokenize=False)
    spans = []
    for k, m in enumerate(msgs):
        if m["role"] == "assistant":
            start = len(tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True))
            spans.append((start, len(tok.apply_chat_template(msgs[: k + 1], tokenize=False))))
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = enc["input_ids"][:max_len]
    labels = [
        t if any(a <= s < b for a, b in spans) else IGNORE_INDEX
        for t, (s, _) in zip(ids, enc["offset_mapping"][:max_len])
    ]
    return {"input_ids": ids, "labels": labels}


def build_model(method: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=288,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        vocab_size=32000,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    return model.train()


def pack(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids, labels, pos = [], [], []
    for ex in examples:
        ids += ex["input_ids"]
        labels += [IGNORE_INDEX] + ex["labels"][1:]  # never predict across an example boundary
        pos += list(range(len(ex["input_ids"])))
    return {k: torch.tensor([v]) for k, v in {"input_ids": ids, "labels": labels, "position_ids": pos}.items()}


def packed_is_isolated(model: torch.nn.Module, examples: list[dict[str, list[int]]]) -> float:
    """Largest |logit difference| of each example alone vs inside a packed row (0 = isolated)."""
    with torch.no_grad():
        b = pack(examples)
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
    return float((packed - alone).abs().max())


def packed_loss(model, batch, *, normalizer):
    """Trained-token loss on a packed row: position_ids must reach the decoder, and no attention
    mask, or transformers builds no per-example blocks and examples attend to each other."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / normalizer, int(keep.sum())


def hf_loss(model, batch, *, normalizer):
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return model(**batch, use_cache=False, num_items_in_batch=normalizer).loss, n


def setup(args: argparse.Namespace):
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tinyllama-1.1b-chat")
    convs = conversations()
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(convs), generator=gen)[: args.examples].tolist()
    data = [encode(tok, convs[i], args.max_len) for i in pick]
    lengths = [len(d["input_ids"]) for d in data]
    order = torch.randperm(len(data), generator=gen).tolist()
    random_plan = [order[i : i + args.micro_batch] for i in range(0, len(order), args.micro_batch)]
    grouped = plan_batches(lengths, micro_batch=args.micro_batch, seed=0, epoch=0)
    budget = plan_batches(lengths, micro_batch=args.micro_batch, max_tokens=args.max_tokens, seed=0, epoch=0)
    pad = lambda exs: collate(exs, tok.pad_token_id)  # noqa: E731

    recipes = {  # variant: (plan, batch maker, loss)
        "random": (random_plan, pad, trained_token_loss),
        "grouped": (grouped, pad, trained_token_loss),
        "grouped-hf": (grouped, pad, hf_loss),
        "budget": (budget, pad, trained_token_loss),
        "packed": (grouped, pack, packed_loss),
    }
    batches = {v: ([make([data[i] for i in b]) for b in plan], loss) for v, (plan, make, loss) in recipes.items()}
    return data, lengths, batches


def step(model, opt, batch, loss_fn) -> None:
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss, _ = loss_fn(model, batch, normalizer=max(n, 1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timing(args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, float]]:
    """Tokens per CPU-second, variants interleaved pass by pass, best pass of --repeats.
    CPU time of this process, not wall time: other jobs share these 2 cores and would be billed
    to whichever variant they happened to overlap."""
    data, lengths, batches = setup(args)
    model = build_model(args.method, getattr(torch, args.dtype))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    best = {v: float("inf") for v in variants}
    for v in variants:  # warm-up: allocator and kernels, not timed
        step(model, opt, batches[v][0][0], batches[v][1])
    for _ in range(args.repeats):
        for v in variants:
            bs, loss_fn = batches[v]
            start = time.process_time()
            for b in bs:
                step(model, opt, b, loss_fn)
            best[v] = min(best[v], time.process_time() - start)
    out = {}
    for v in variants:
        slots = sum(b["input_ids"].numel() for b in batches[v][0])
        out[v] = {"tokens_per_cpu_s": sum(lengths) / best[v], "padding": 1 - sum(lengths) / slots}
    if "packed" in variants:
        out["packed"]["max_logit_diff"] = packed_is_isolated(model, data[:3])
    return out


def step_memory(args: argparse.Namespace, variant: str) -> float:
    """MB that RSS grows by during one training step on the widest batch of `variant`, sampled
    every 2 ms from a thread (torch releases the GIL in its kernels). ru_maxrss cannot answer this:
    loading the tokenizer and model already set the process's high-water mark."""
    _, _, batches = setup(args)
    model = build_model(args.method, getattr(torch, args.dtype))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bs, loss_fn = batches[variant]
    widest = max(bs, key=lambda b: b["input_ids"].numel())
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20  # noqa: E731
    base, peak, done = rss(), [0.0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=poll)
    sampler.start()
    step(model, opt, widest, loss_fn)
    done.set()
    sampler.join()
    return peak[0] - base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(VARIANTS))
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory-only", action="store_true", help="skip the timing")
    p.add_argument("--memory", help=argparse.SUPPRESS)  # child process: one variant's step memory
    args = p.parse_args()
    if args.memory:
        print(json.dumps(step_memory(args, args.memory)))
        return
    variants = args.only.split(",")
    results = {v: {"tokens_per_cpu_s": float("nan"), "padding": float("nan")} for v in variants}
    if not args.memory_only:
        results = timing(args, variants)
    for v in variants:  # a fresh process per variant: freed memory is not always returned to the OS
        cmd = [sys.executable, __file__, "--memory", v] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[v]["step_mb"] = json.loads(out.splitlines()[-1])
    base = results[variants[0]]
    print(f"{'variant':<15} {'tok/CPU-s':>9} {'x base':>7} {'padding':>8} {'step MB':>8} {'x base':>7}")
    for v in variants:
        r = results[v]
        print(
            f"{v:<15} {r['tokens_per_cpu_s']:9.0f} {r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:7.2f} "
            f"{r['padding']:8.1%} {r['step_mb']:8.0f} {r['step_mb'] / base['step_mb']:7.2f}"
        )
    if "max_logit_diff" in results.get("packed", {}):
        print(f"packed rows vs each example alone: max |logit difference| {results['packed']['max_logit_diff']:.1e}")


if __name__ == "__main__":
    main()
