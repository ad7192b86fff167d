"""Benchmark: `tunesmith train` against TRL's `SFTTrainer`, same model, data and workload, one run.

    .venv/bin/python bench/train.py                                  # small model, LoRA and full FT
    .venv/bin/python bench/train.py --models small,medium --examples 320
    .venv/bin/python bench/train.py --models smollm2 --examples 128     # the real model (~1 hour on 2 cores)
    .venv/bin/python bench/train.py --methods lora --contenders trl-best,trl-rebalance,tunesmith

For each model (`tunesmith.models.tiny` presets, built once and cached: `small` ~15.7M-parameter
Llama, `medium` ~107M) and method (LoRA r=16 all-linear with dropout 0, or full fine-tuning), every
contender trains on the same `--examples` synthetic chat conversations (20-400 tokens) for one
epoch: micro-batch 8, accumulation 2 (effective batch 16), max length 512, fp32 weights on CPU,
the same LR, cosine schedule with 5% warmup, clipping 1.0, seed 0. Each contender runs in its own
fresh process (so peak RSS is its own), back to back. See bench/README.md for the columns and figures.

Contenders (`--contenders`, the first five by default):
  trl-default       SFTConfig defaults, save for the shared workload above and use_cpu=True,
                    bf16=False (gradient checkpointing on, random batches, loss on every token,
                    TRL's fused chunked log-prob head)
  trl-default-bf16  the same with bf16 autocast: TRL's literal default once use_cpu=True
  trl-best          the fastest TRL configuration found on CPU in fp32: gradient checkpointing
                    off, train_sampling_strategy="group_by_length", assistant_only_loss=True
  trl-best-bf16     the same with bf16 autocast (faster still where the CPU has AMX/AVX512-BF16)
  tunesmith         `tunesmith.train.recipe.train(config)` with the equivalent Config, its defaults
                    otherwise (train.mixed_precision=auto: bf16 autocast on such CPUs)
  tunesmith-fp32    the same with train.mixed_precision=fp32
  tunesmith-glibc   `tunesmith` on glibc's malloc instead of the allocator it re-executes under
  trl-nogc          gradient checkpointing off only
  trl-rebalance     as trl-best with train_sampling_strategy="batch_rebalance"
  trl-padfree       as trl-best with padding_free=True (one flattened row per batch)
The ratio columns compare with the fastest of trl-default / trl-default-bf16 ("TRL default") and
of trl-best / trl-best-bf16 ("TRL best") that ran; the table's footer says which was chosen.

Measured in each child: non-pad tokens fed to the model during the training steps divided by the
wall time of those steps (first batch built -> last optimizer step done; model loading,
tokenization, the final validation and saving excluded), padding share, peak RSS of the process up
to the end of training (ru_maxrss), and then the loss on a fixed held-out set, computed for every
contender by `heldout_loss` below from the model or adapter it saved. Ratios only, no verdicts:
the machine is shared, so compare contenders of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunesmith import allocator  # noqa: E402  (after the path insert: the checkout's own package)

WORK = Path(tempfile.gettempdir()) / "tunesmith-bench-train"
MICRO_BATCH, ACCUMULATION, MAX_LEN = 8, 2, 512
MIN_TOKENS, MAX_TOKENS = 20, 400  # conversation lengths drawn uniformly in between
HELDOUT = 64  # conversations of the fixed held-out set
INTERNAL_VAL_FRACTION = 0.02  # tunesmith validates on this many (relative to train) extra conversations
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
LR = {"lora": 2e-4, "full": 2e-5}  # tunesmith's defaults, used by every contender
WARMUP = 0.05
SEED = 0  # --seed: the training seed (TRL's data order and init, tunesmith's batch order)
# Each baseline is the fastest of its precisions in the run: TRL's literal default on CPU
# (use_cpu=True) is bf16 autocast, the issue measured fp32, and bf16 was the faster TRL here.
BASELINES = {"trl-default": ("trl-default", "trl-default-bf16"), "trl-best": ("trl-best", "trl-best-bf16")}
# TRL settings on top of the shared workload; {} is TRL's defaults.
TRL_VARIANTS: dict[str, dict[str, Any]] = {
    "trl-default": {},
    "trl-best": {
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
        "assistant_only_loss": True,
    },
    "trl-default-bf16": {"bf16": True},  # TRL's literal default with use_cpu=True: bf16 autocast
    "trl-best-bf16": {
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
        "assistant_only_loss": True,
        "bf16": True,
    },
    "trl-nogc": {"gradient_checkpointing": False},
    "trl-rebalance": {
        "gradient_checkpointing": False,
        "train_sampling_strategy": "batch_rebalance",
        "assistant_only_loss": True,
    },
    # TRL refuses max_length with padding_free and no packing; no example here is longer than 400 tokens.
    "trl-padfree": {
        "gradient_checkpointing": False,
        "padding_free": True,
        "assistant_only_loss": True,
        "max_length": None,
    },
}
# train.mixed_precision of each tunesmith contender
TUNESMITH_PRECISION = {"tunesmith": "auto", "tunesmith-fp32": "fp32", "tunesmith-glibc": "auto"}
CONTENDERS = (*TRL_VARIANTS, *TUNESMITH_PRECISION)
DEFAULT_CONTENDERS = ("trl-default", "trl-default-bf16", "trl-best", "trl-best-bf16", "tunesmith")
TRAIN_FILE, VAL_FILE, HELDOUT_FILE = "train.jsonl", "val.jsonl", "heldout.jsonl"
TRAIN_FILE, POOL_FILE, HELDOUT_FILE = "train.jsonl", "tunesmith.jsonl", "heldout.jsonl"
REAL_MODEL = "smollm2"  # --models smollm2: SmolLM2-135M-Instruct (134.5M), imported from its GGUF


# ============================================================================ model and data


def model_dir(preset: str) -> Path:
    """The preset's model directory under WORK, built on first use (random weights, seed 0)."""
    from tunesmith.examples.text2sql import example_texts

    """The preset's model directory under WORK, built on first use (random weights, seed 0); for
    `smollm2`, the real SmolLM2-135M-Instruct (see smollm2_dir)."""
    from tunesmith.models.tiny import build_tiny_model

    out = WORK / "models" / preset
    if preset == REAL_MODEL:
        return smollm2_dir(out)
    if not (out / "model.safetensors").is_file():
        print(f"building the {preset} model in {out} ...", flush=True)
        build_tiny_model(out, preset=preset, texts=example_texts())
    return out


def smollm2_dir(out: Path) -> Path:
    """SmolLM2-135M-Instruct, imported once into the tunesmith cache, with its weights linked here and
    its ChatML template swapped for the same ChatML with `{% generation %}` marks (the presets'),
    which TRL's assistant_only_loss needs. Every contender gets this one template."""
    from transformers import AutoTokenizer

    from tunesmith.models.builtin import resolve
    from tunesmith.models.tiny import CHATML_TEMPLATE

    if (out / "tokenizer.json").is_file():
        return out
    source = resolve("smollm2-135m-instruct")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(source / name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def _length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def make_conversations(tokenizer: Any, n: int, seed: int) -> list[list[dict[str, str]]]:
    """`n` text-to-SQL chats with lengths spread over MIN_TOKENS..MAX_TOKENS: each draws a target
    length, starts with the schema system prompt half the time (~165 tokens with the presets'
    tokenizers), then takes question/answer blocks (a follow-up stays with its question) until the
    target is reached. No block is used twice, so no two conversations share an answer."""
    from tunesmith.examples.text2sql import DB_FILE, FLAW_KEY, generate_conversations, generate_database

    db = WORK / DB_FILE
    if not db.is_file():
        generate_database(db)
    rows = generate_conversations(db, n=4 * n, flaw_rate=0.0, seed=seed)
    clean = [r for r in rows if isinstance(r, dict) and FLAW_KEY not in r]
    system, blocks = clean[0]["messages"][0], [r["messages"][1:] for r in clean]
    rng = random.Random(seed)
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        target = rng.randint(MIN_TOKENS, MAX_TOKENS)
        messages = [system] if rng.random() < 0.5 else []
        while blocks and (not _answered(messages) or _length(tokenizer, messages) < target):
            longer = messages + blocks.pop()
            if _length(tokenizer, longer) <= MAX_TOKENS:
                messages = longer
            elif _answered(messages):
                break
            # else: the system prompt plus this block is too long; draw another block
        if not _answered(messages):
            raise RuntimeError(f"ran out of question blocks after {len(out)} conversations")
        out.append(messages)
    return out


def _answered(messages: list[dict[str, str]]) -> bool:
    return bool(messages) and messages[-1]["role"] == "assistant"


def write_jsonl(path: Path, conversations: list[list[dict[str, str]]]) -> None:
    from tunesmith.runs import write_jsonl as atomic_write_jsonl

    atomic_write_jsonl(path, ({"messages": m} for m in conversations))


def read_jsonl(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def prepare_data(preset: str, n_train: int) -> Path:
    """Write the data of one model: TRAIN_FILE (what every contender trains on), VAL_FILE (what
    tunesmith validates on, given as data.val_path) and HELDOUT_FILE. Returns the data directory."""
    from transformers import AutoTokenizer

    data = WORK / "data" / f"{preset}-{n_train}"
    if all((data / f).is_file() for f in (TRAIN_FILE, VAL_FILE, HELDOUT_FILE)):
        return data
    n_val = max(1, round(n_train * INTERNAL_VAL_FRACTION))
    tokenizer = AutoTokenizer.from_pretrained(model_dir(preset))
    conversations = make_conversations(tokenizer, n_train + n_val + HELDOUT, seed=1)
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / TRAIN_FILE, conversations[:n_train])
    write_jsonl(data / VAL_FILE, conversations[n_train : n_train + n_val])
    write_jsonl(data / HELDOUT_FILE, conversations[n_train + n_val :])
    return data


# ============================================================================ evaluation


def heldout_loss(base: Path, result: Path | None, heldout: Path, batch: int = MICRO_BATCH) -> float:
    """Mean cross-entropy per assistant token (answers and their end-of-turn token, as the chat
    template's {% generation %} marks them) over the held-out conversations, of the base model
    with `result` applied: a peft adapter directory, a full model directory, or None (the base)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if result is not None and (result / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), result)
    else:
        model = AutoModelForCausalLM.from_pretrained(result or base, dtype=torch.float32)
    model.eval()
    examples = []
    for messages in read_jsonl(heldout):
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        examples.append((enc["input_ids"], enc["assistant_masks"]))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            trained = torch.zeros((len(chunk), width), dtype=torch.bool)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, mask) in enumerate(chunk):
                ids[row, : len(x)] = torch.tensor(x)
                trained[row, : len(x)] = torch.tensor(mask, dtype=torch.bool)
                attention[row, : len(x)] = 1
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
            keep = trained[:, 1:]  # position t predicts token t+1
            total += float(F.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


# ============================================================================ contenders (child processes)


class _Meter:
    """Non-pad and padded tokens fed, and the span of the training steps in wall-clock time and in
    this process's CPU time (all threads). CPU time is the cross-check on a shared machine: other
    jobs stretch the wall clock of whoever they overlap, much less the CPU seconds a step needs."""

    def __init__(self) -> None:
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self.tokens = 0
        self.slots = 0

    def batch(self, tokens: int, slots: int) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), time.process_time())
        self.tokens += tokens
        self.slots += slots

    def stop(self) -> None:
        if self.end is None:
            self.end = (time.perf_counter(), time.process_time())

    def result(self) -> dict[str, Any]:
        if self.start is None or self.end is None:
            raise RuntimeError("no training step was measured: did the trainer's internals change?")
        wall, cpu = (b - a for a, b in zip(self.start, self.end))
        return {
            "tokens": self.tokens,
            "slots": self.slots,
            "padding": 1 - self.tokens / self.slots,
            "train_s": wall,
            "tokens_per_s": self.tokens / wall,
            "cpu_s": cpu,
            "tokens_per_cpu_s": self.tokens / cpu,
        }


def run_trl(spec: dict[str, Any], out_dir: Path, meter: _Meter) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    base = Path(spec["model_dir"])
    workload = dict(
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        num_train_epochs=1,
        learning_rate=LR[spec["method"]],
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        max_grad_norm=1.0,
        weight_decay=0.0,
        max_length=MAX_LEN,
        seed=spec["seed"],
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    args = SFTConfig(output_dir=str(out_dir), **{**workload, **TRL_VARIANTS[spec["contender"]]})
    peft_config = None
    if spec["method"] == "lora":
        peft_config = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["target_modules"],
            task_type="CAUSAL_LM",
        )
    dataset = Dataset.from_list([{"messages": m} for m in read_jsonl(Path(spec["data_dir"]) / TRAIN_FILE)])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(base),
        peft_config=peft_config,
    )
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")  # absent when padding-free: every position is a token
        meter.batch(int(mask.sum()) if mask is not None else ids.numel(), ids.numel())
        return batch

    class StepsDone(TrainerCallback):
        def on_train_end(self, *_, **__):
            meter.stop()

    trainer.data_collator = counting_collator
    trainer.add_callback(StepsDone())
    trainer.train()
    result = out_dir / "result"
    trainer.save_model(str(result))
    return result


def run_tunesmith(spec: dict[str, Any], out_dir: Path, meter: _Meter) -> Path:
    """`recipe.train` with the equivalent Config. Its `_accumulate` (one optimizer step's
    forward/backward) and `_evaluate` are wrapped only to count tokens and to stop the clock
    where the final validation starts; nothing else changes."""
    from tunesmith.config import Config
    from tunesmith.train import recipe
    from tunesmith.train.batching import padded_width

    config = Config.model_validate(
        {
            "name": "bench",
            "runs_dir": str(out_dir),
            "model": {"name_or_path": spec["model_dir"], "dtype": "float32"},
            "data": {
                "path": str(Path(spec["data_dir"]) / TRAIN_FILE),
                "val_path": str(Path(spec["data_dir"]) / VAL_FILE),
                "format": "messages",
                "max_seq_len": MAX_LEN,
            },
            # Generated conversations: the leakage check (MinHash only, no embedder) is a formality.
            "split": {"embedder": "none", "allow_leakage": True},
            "lora": LORA,
            "train": {
                "method": spec["method"],
                "lr": LR[spec["method"]],
                "epochs": 1,
                "micro_batch": MICRO_BATCH,
                "effective_batch": MICRO_BATCH * ACCUMULATION,
                "warmup_ratio": WARMUP,
                "grad_clip": 1.0,
                "weight_decay": 0.0,
                "eval_every": 1.0,
                "early_stopping_patience": 0,
                "seed": spec["seed"],
                "resume": "never",
                "mixed_precision": TUNESMITH_PRECISION[spec["contender"]],
            },
        }
    )
    accumulate, evaluate = recipe._accumulate, recipe._evaluate

    def counting_accumulate(loss_model, accelerator, window, *args, **kwargs):
        for examples in window:
            lengths = [len(e.input_ids) for e in examples]
            meter.batch(sum(lengths), len(lengths) * padded_width(max(lengths), config.train.pad_to_multiple_of))
        return accumulate(loss_model, accelerator, window, *args, **kwargs)

    def timed_evaluate(*args, **kwargs):
        meter.stop()  # the first validation comes after the last step (eval_every = 1 epoch)
        return evaluate(*args, **kwargs)

    recipe._accumulate, recipe._evaluate = counting_accumulate, timed_evaluate
    result = recipe.train(config)
    if result.final_dir is None:
        raise RuntimeError(f"tunesmith exported no model: {result}")
    return result.final_dir


def child(spec_path: Path) -> None:
    """One contender in this fresh process; writes its measurements to spec['result']."""
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    out_dir = Path(spec["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    meter = _Meter()
    started = time.perf_counter()
    runner = run_tunesmith if spec["contender"] in TUNESMITH_PRECISION else run_trl
    saved = runner(spec, out_dir, meter)
    row = {
        **meter.result(),
        "total_s": time.perf_counter() - started,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "allocator": allocator.running(),
    }
    row["heldout_loss"] = heldout_loss(Path(spec["model_dir"]), saved, Path(spec["data_dir"]) / HELDOUT_FILE)
    Path(spec["result"]).write_text(json.dumps(row))


# ============================================================================ driver


def run_contender(
    preset: str, method: str, contender: str, data: Path, threads: int, trl_allocator: str, seed: int
) -> dict[str, Any] | None:
    name = f"{preset}-{method}-{contender}"
    spec = {
        "contender": contender,
        "method": method,
        "model_dir": str(model_dir(preset)),
        "data_dir": str(data),
        "threads": threads,
        "seed": seed,
        "out_dir": str(WORK / "runs" / name),
        "result": str(WORK / "results" / f"{name}.json"),
    }
    spec_path = WORK / "results" / f"{name}.spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    log = WORK / "results" / f"{name}.log"
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env = {**os.environ, **threads_env}
    # tunesmith contenders run under the allocator `tunesmith train` re-executes itself under
    # (tunesmith/allocator.py: tcmalloc or jemalloc when installed); TRL ones under --trl-allocator.
    # tunesmith-glibc: as `tunesmith`, on the C library's malloc (TUNESMITH_ALLOCATOR=system).
    if contender == "tunesmith-glibc":
        chosen = None
    else:
        chosen = allocator.choose(None if contender in TUNESMITH_PRECISION else trl_allocator)
    if chosen is not None:
        env = allocator.environment(*chosen, env)
    print(f"  {name} ...", end=" ", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(spec_path)], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    if proc.returncode != 0:  # reported, and the other contenders still run
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        print(f"FAILED (exit {proc.returncode}); log {log}:\n{tail}", flush=True)
        return None
    row = json.loads(Path(spec["result"]).read_text())
    print(
        f"{row['tokens_per_s']:,.0f} tok/s, {row['peak_rss_gb']:.2f} GB, held-out loss {row['heldout_loss']:.4f}",
        flush=True,
    )
    return {"model": preset, "method": method, "contender": contender, **row}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed (wall and CPU), memory and loss of each row relative to the TRL baselines of its
    (model, method); each baseline is the fastest of its precision variants that ran."""
    for row in rows:
        for name, variants in BASELINES.items():
            group = [
                r
                for r in rows
                if (r["model"], r["method"]) == (row["model"], row["method"]) and r["contender"] in variants
            ]
            if not group:
                continue
            base = max(group, key=lambda r: r["tokens_per_s"])
            row[f"{name}_is"] = base["contender"]
            row[f"speed_vs_{name}"] = row["tokens_per_s"] / base["tokens_per_s"]
            row[f"cpu_speed_vs_{name}"] = row["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
            row[f"rss_vs_{name}"] = row["peak_rss_gb"] / base["peak_rss_gb"]
            row[f"loss_vs_{name}"] = row["heldout_loss"] / base["heldout_loss"]


COLUMNS = (  # header, row -> text; "-" where the baseline did not run
    ("model", lambda r: r["model"]),
    ("method", lambda r: r["method"]),
    ("contender", lambda r: r["contender"]),
    ("tok/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
    ("× TRL def", lambda r: _ratio(r, "speed_vs_trl-default")),
    ("× TRL best", lambda r: _ratio(r, "speed_vs_trl-best")),
    ("tok/CPU-s", lambda r: f"{r['tokens_per_cpu_s']:,.0f}"),
    ("CPU × def", lambda r: _ratio(r, "cpu_speed_vs_trl-default")),
    ("CPU × best", lambda r: _ratio(r, "cpu_speed_vs_trl-best")),
    ("peak RSS GB", lambda r: f"{r['peak_rss_gb']:.2f}"),
    ("RSS × best", lambda r: _ratio(r, "rss_vs_trl-best")),
    ("padding", lambda r: f"{r['padding']:.1%}"),
    ("malloc", lambda r: r.get("allocator", "system")),
    ("held-out loss", lambda r: f"{r['heldout_loss']:.4f}"),
    ("loss × best", lambda r: _ratio(r, "loss_vs_trl-best", "{:.3f}")),
    ("tokens", lambda r: f"{r['tokens']:,}"),
    ("steps s", lambda r: f"{r['train_s']:.0f}"),
    ("total s", lambda r: f"{r['total_s']:.0f}"),
)


def _ratio(row: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(row[key]) if key in row else "-"


def print_table(rows: list[dict[str, Any]], base_losses: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training speed: non-pad tokens per second of the training steps (ratios within this run)")
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("model", "method", "contender") else "right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in COLUMNS))
    Console(width=240).print(table)
    print("held-out loss before training: " + ", ".join(f"{m} {v:.4f}" for m, v in base_losses.items()))
    for group in sorted({(r["model"], r["method"]) for r in rows}):
        row = next(r for r in rows if (r["model"], r["method"]) == group)
        chosen = [f"{name} = {row[f'{name}_is']}" for name in BASELINES if f"{name}_is" in row]
        print(f"baselines {'-'.join(group)} (fastest precision): {', '.join(chosen) or 'none ran'}")
    for group in sorted({(r["model"], r["method"]) for r in rows}):
        fed = {r["contender"]: r["tokens"] for r in rows if (r["model"], r["method"]) == group}
        if len(set(fed.values())) > 1:  # the same examples tokenize the same: a difference means different data
            print(f"NOTE {'-'.join(group)}: contenders were fed different numbers of tokens: {fed}")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small", help="comma-separated: small, medium (tiny presets), smollm2 (real)")
    p.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    p.add_argument(
        "--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"comma-separated, from {', '.join(CONTENDERS)}"
    )
    p.add_argument("--examples", type=int, default=320, help="training examples each contender sees (one epoch)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=1, help="rounds of all contenders; each keeps its fastest round")
    p.add_argument("--out", type=Path, default=WORK / "results.json", help="where the JSON results go")
    p.add_argument(
        "--trl-allocator",
        default="system",
        help="the C allocator of the TRL contenders: system (as TRL runs), auto, tcmalloc, jemalloc",
    )
    p.add_argument("--seed", type=int, default=SEED, help="training seed of every contender (data order)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one contender
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    models, methods, contenders = (s.split(",") for s in (args.models, args.methods, args.contenders))
    unknown = [
        *sorted(set(contenders) - set(CONTENDERS)),
        *sorted(set(methods) - set(LR)),
        *sorted(set(models) - {"small", "medium", REAL_MODEL}),
    ]
    if unknown:
        p.error(f"unknown names {unknown}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.examples % (MICRO_BATCH * ACCUMULATION):
        p.error(f"--examples must be a multiple of {MICRO_BATCH * ACCUMULATION} (whole optimizer steps for everyone)")
    started = time.time()
    rows, base_losses, failed = [], {}, []
    for preset in models:
        data = prepare_data(preset, args.examples)
        base_losses[preset] = heldout_loss(model_dir(preset), None, data / HELDOUT_FILE)
        print(
            f"{preset}: {args.examples} examples from {data}, held-out loss before training {base_losses[preset]:.4f}"
        )
        for method in methods:
            # Rounds go through every contender in turn, so a burst of someone else's work on the
            # machine hits one round of one contender, and its other rounds still count.
            rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            for _ in range(args.repeats):
                for contender in contenders:
                    row = run_contender(preset, method, contender, data, args.threads, args.trl_allocator, args.seed)
                    if row is None:
                        failed.append(f"{preset}-{method}-{contender}")  # once per failed round
                    else:
                        rounds[contender].append(row)
            for done in filter(None, rounds.values()):
                best = max(done, key=lambda r: r["tokens_per_s"])
                rows.append({**best, "rounds_tokens_per_s": [r["tokens_per_s"] for r in done]})
    add_ratios(rows)
    print_table(rows, base_losses)
    minutes = (time.time() - started) / 60
    print(f"{minutes:.1f} minutes; contenders ran back to back on a shared machine: compare within this run only")
    from tunesmith.runs import write_json

    write_json(
        args.out,
        {
            "rows": rows,
            "failed": failed,
            "heldout_loss_before": base_losses,
            "minutes": minutes,
            "settings": {
                "examples": args.examples,
                "threads": args.threads,
                "trl_allocator": args.trl_allocator,
                "seed": args.seed,
                "repeats": args.repeats,
                "micro_batch": MICRO_BATCH,
                "accumulation": ACCUMULATION,
                "max_len": MAX_LEN,
                "lr": LR,
                "lora": LORA,
                "warmup": WARMUP,
                "trl_variants": TRL_VARIANTS,
            },
            "versions": versions(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        },
    )
    print(f"results: {args.out}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (logs in {WORK / 'results'})")


if __name__ == "__main__":
    main()
