"""GPUs the plan knows, the memory budget of this machine, and time and cost from FLOPs.

Peak figures are NVIDIA's dense (no sparsity) bf16 tensor-core numbers (fp16 for the T4 and V100,
which have no bf16); prices are indicative on-demand US$ per GPU-hour (late 2025, they vary by
provider: pass `--price-per-hour` for yours).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from tunesmith.plan.params import PlanError

# Model FLOPs utilisation: the share of peak a fine-tuning step reaches. 0.35 is typical of
# single-node bf16 training with FlashAttention/SDPA; QLoRA dequantises every weight on every
# pass and lands lower.
DEFAULT_MFU = {"full": 0.35, "lora": 0.35, "qlora": 0.25}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int  # bytes
    peak_flops: float  # dense bf16 (fp16) FLOP/s
    price_per_hour: float  # indicative US$


GPUS: dict[str, Gpu] = {
    g.name.lower(): g
    for g in (
        Gpu("H200", 141 * 10**9, 989e12, 3.80),
        Gpu("H100", 80 * 10**9, 989e12, 2.90),
        Gpu("A100-80GB", 80 * 10**9, 312e12, 1.80),
        Gpu("A100-40GB", 40 * 10**9, 312e12, 1.30),
        Gpu("L40S", 48 * 10**9, 362e12, 1.00),
        Gpu("A10G", 24 * 10**9, 70e12, 1.00),
        Gpu("L4", 24 * 10**9, 121e12, 0.80),
        Gpu("RTX4090", 24 * 10**9, 165e12, 0.60),
        Gpu("RTX3090", 24 * 10**9, 71e12, 0.30),
        Gpu("T4", 16 * 10**9, 65e12, 0.40),
        Gpu("V100", 16 * 10**9, 125e12, 0.80),
    )
}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tb": 10**12, "tib": 2**40}


def find_gpu(name: str) -> Gpu:
    key = name.lower().replace(" ", "").replace("_", "-")
    for candidate in (key, key.replace("-", ""), f"{key}-80gb"):
        if candidate in GPUS:
            return GPUS[candidate]
    raise PlanError(
        f"unknown GPU {name!r}: known ones are {', '.join(g.name for g in GPUS.values())}; or give --gpu-memory"
    )


def parse_bytes(text: str) -> int:
    """`24GiB`, `80GB`, `16g`, `1.5TB` → bytes (GB = 10**9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise PlanError(f"memory size {text!r}: expected a number and a unit, e.g. 24GiB or 80GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def local_budget() -> tuple[str, int, str]:
    """(device kind, bytes, description) of this machine: the first CUDA GPU's memory, else RAM."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return "gpu", int(props.total_memory), props.name
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 10**9
    return "cpu", int(ram), f"CPU, {ram / 1e9:.0f} GB RAM"


def training_flops_per_token(active_params: int, layers: int, seq_len: int, q_dim: int, method: str) -> float:
    """Forward 2N + backward 4N per token for full fine-tuning; LoRA skips the frozen weights'
    gradients (backward ~2N). Attention scores add 2·2·L·s·q_dim forward (causal: half), ×3 with backward."""
    weight = (6 if method == "full" else 4) * active_params
    attention = 3 * 2 * layers * seq_len * q_dim
    return weight + attention


def hours(tokens: float, flops_per_token: float, gpu: Gpu, gpus: int, mfu: float) -> float:
    return tokens * flops_per_token / (gpu.peak_flops * mfu * max(1, gpus)) / 3600


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / max(1, b))
