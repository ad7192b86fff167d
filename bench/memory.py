"""The plan's memory estimate against the measured peak of real training steps, on CPU.

For each model × method × (sequence length, micro-batch), a fresh subprocess imports everything,
records its RSS (the baseline), loads the model from safetensors as `tunesmith train` does
(`models.load.load_model` + `models.adapters.wrap_model`), and runs three optimizer steps of our
loss (train/loss.py) under the precision the recipe would choose, with fused AdamW. Measured =
peak RSS (ru_maxrss) minus the baseline. Estimated = `plan.memory.estimate_memory(...).total`
(CPU overheads included). Target: every estimate within 20% of measured.

    PYTHONPATH=src python bench/memory.py                 # the full grid (~10 min on 2 busy cores)
    PYTHONPATH=src python bench/memory.py --quick         # 6 models × 3 methods × 1 shape
    PYTHONPATH=src python bench/memory.py --gpu           # on a CUDA machine: torch.cuda.max_memory_allocated
    PYTHONPATH=src python bench/memory.py --quick --allocator tcmalloc   # children under tcmalloc (as `tunesmith train`)

RSS on a shared machine is still this process's own memory; timings are not reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

# name: (arch, vocab, hidden, layers, heads, kv_heads, intermediate)
MODELS = {
    "tiny-llama": ("llama", 4096, 128, 4, 4, 2, 384),
    "small-llama": ("llama", 8192, 384, 8, 6, 2, 1024),
    "small-qwen2": ("qwen2", 16384, 384, 8, 6, 2, 1024),
    "wide-llama": ("llama", 16000, 768, 4, 12, 4, 2048),
    "medium-llama": ("llama", 32000, 768, 12, 12, 4, 2304),
    "deep-qwen2": ("qwen2", 8192, 512, 16, 8, 2, 1408),
}
METHODS = ("full", "lora", "qlora")
SHAPES = ((256, 2), (512, 4))  # (sequence length, micro-batch)
STEPS = 3
TRAINED_FRACTION = 0.5  # the second half of each row carries loss, like a prompt then an answer


def build(root: Path, name: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models.tiny import Dims, model_config

    arch, vocab, hidden, layers, heads, kv, inter = MODELS[name]
    out = root / name
    if not (out / "config.json").exists():
        config = model_config(arch, Dims(vocab, hidden, layers, heads, kv, inter), eos_token_id=0, pad_token_id=0)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(model_dir: str, method: str, seq: int, micro: int, gpu: bool) -> dict:
    """One measurement, in its own process."""
    import torch

    from tunesmith import allocator
    from tunesmith.config import LoraConfig, TrainConfig
    from tunesmith.models.adapters import wrap_model
    from tunesmith.models.load import load_model, native_bf16
    from tunesmith.plan.memory import Setup, estimate_memory
    from tunesmith.plan.params import shape_of
    from tunesmith.train.loss import trained_token_loss

    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # as the recipe sets it
    device = "cuda" if gpu else "cpu"
    bf16 = torch.cuda.is_bf16_supported() if gpu else native_bf16()
    baseline = rss()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    model = load_model(
        model_dir, dtype="auto", quantization="4bit" if method == "qlora" else None, device_map={"": 0} if gpu else None
    )
    model = wrap_model(model, TrainConfig(method=method), LoraConfig())
    if gpu:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    vocab = model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        ids = torch.randint(1, vocab, (micro, seq), generator=g)
        labels = ids.clone()
        labels[:, : int(seq * (1 - TRAINED_FRACTION))] = -100
        batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = trained_token_loss(model, batch, normalizer=max(1, int((labels[:, 1:] != -100).sum())))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = torch.cuda.max_memory_allocated() if gpu else peak_rss - baseline
    weight_dtype = str(next(p for p in model.parameters() if p.dtype.is_floating_point).dtype).removeprefix("torch.")
    setup = Setup(
        method=method,  # type: ignore[arg-type]
        micro_batch=micro,
        seq_len=seq,
        weight_dtype="float32" if method == "qlora" and not gpu else weight_dtype,  # type: ignore[arg-type]
        compute="bf16" if bf16 else "fp32",
        lora_r=LoraConfig().r,
        trained_fraction=TRAINED_FRACTION,
        device="gpu" if gpu else "cpu",
        allocator=allocator.running(),  # type: ignore[arg-type]
    )
    estimate = estimate_memory(shape_of(model_dir), setup)
    terms = dict(estimate.terms)
    if gpu:  # max_memory_allocated sees neither the CUDA context nor the allocator's slack
        terms.pop("overhead")
    return {"estimate": sum(terms.values()), "measured": measured, "terms": terms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape per model and method")
    parser.add_argument("--gpu", action="store_true", help="measure torch.cuda.max_memory_allocated on a GPU")
    parser.add_argument("--shapes", nargs="*", help="SEQxMB pairs, e.g. 512x4 (default: the grid's)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--allocator", default="system", help="the C allocator of each measurement: system, tcmalloc, jemalloc"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, method, seq, micro = args.child
        print(json.dumps(child(model_dir, method, int(seq), int(micro), args.gpu)))
        return
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(x) for x in shape.split("x")) for shape in args.shapes)
    from tunesmith import allocator  # PYTHONPATH=src, as the usage above says

    chosen = allocator.choose(args.allocator)
    env = allocator.environment(*chosen) if chosen else os.environ.copy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'model':14} {'method':6} {'seq×mb':>8} {'estimate':>10} {'measured':>10} {'ratio':>6}")
        for name in args.models:
            model_dir = build(Path(tmp), name)
            for method in args.methods:
                for seq, micro in shapes:
                    cmd = [sys.executable, __file__, "--child", str(model_dir), method, str(seq), str(micro)]
                    cmd += ["--gpu"] if args.gpu else []
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        print(f"{name:14} {method:6} {seq}×{micro:<4} failed: {out.stderr.strip().splitlines()[-1:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    ratio = r["estimate"] / max(r["measured"], 1)
                    rows.append(
                        {"model": name, "method": method, "seq": seq, "micro_batch": micro, **r, "ratio": ratio}
                    )
                    print(
                        f"{name:14} {method:6} {seq:>4}×{micro:<3} {r['estimate'] / 1e6:>8.0f}MB {r['measured'] / 1e6:>8.0f}MB "
                        f"{ratio:>6.2f}",
                        flush=True,
                    )
    within = [r for r in rows if abs(r["ratio"] - 1) <= 0.2]
    print(f"within 20%: {len(within)} of {len(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
