"""Training memory, term by term, as `tunesmith train` spends it (not a generic trainer).

What our trainer does, and so what is counted (bytes per term, one device):
- **weights**: every parameter in the model's dtype (`model.dtype: auto` is bfloat16 on a GPU with
  it, float32 on CPU); QLoRA stores decoder Linear weights as NF4 (0.5 byte) plus its quantisation
  constants (double quantisation: an 8-bit absmax per block of 64 and an fp32 constant per 256
  blocks, 0.127 bit per weight), and peft's `prepare_model_for_kbit_training` upcasts everything
  else (embeddings, head, norms) to fp32.
- **autocast_copies**: under bf16 autocast with fp32 weights (CPUs with bf16, `model.dtype=float32`
  on a GPU) each Linear's bf16 copy of its weight is saved for backward: 2 bytes per Linear weight.
- **gradients**: trainable parameters in their dtype; they persist across an accumulation window.
- **optimizer**: torch's fused AdamW keeps two moments in the parameter's dtype; 8-bit Adam 2 bytes.
- **lora**: LoRA adapters (peft keeps them fp32) with their gradients and AdamW moments: 16 bytes each.
- **activations**: what autograd saves per token and decoder layer, measured on our loss path
  with saved-tensor hooks (tests/plan/test_memory.py re-measures it): bf16 autocast
  30·h + 8·i + 4·kv bytes for full fine-tuning (24·h + … for LoRA, whose frozen weights need no
  saved norm outputs), fp32 32·h + 16·i + 8·kv; LoRA adds r bytes × 2 (4 in fp32) per targeted
  module. Gradient checkpointing keeps a layer's fp32 input (4·h) and recomputes one layer at a time.
- **logits**: train/loss.py sends only trained positions through the head, a chunk of 2**24 logits
  at a time, producing the gradient on the spot: one chunk of fp32 logits (plus its bf16 twin),
  the trained rows and their gradient, and for full fine-tuning a fp32 head-gradient buffer.
  Model types outside its plain-head list go through the model's own forward: full-vocabulary
  logits for every position (the term that surprises people on 150k-256k vocabularies).
- **quantize_transient** (QLoRA on CPU): the Linear weights pass through RAM in full precision
  while they are quantised on load, and the process keeps those pages.
- **allocator_retention** (CPU, glibc's malloc): freed temporaries whose pages glibc keeps, ~0.75x
  the saved activations, less whatever the gradients reuse (bench/memory.py).
- **freed_during_backward** (CPU under tcmalloc or jemalloc, which `tunesmith train` re-executes
  under when installed: tunesmith/allocator.py): a negative term. These allocators hand freed
  pages back, and backward frees each layer's saved activations as it writes that layer's weight
  gradients, so the two overlap: the peak holds about the larger of them (bench/memory.py).
- **overhead**: the CUDA context and allocator slack on a GPU; on CPU, the allocator and oneDNN's
  kernel cache. A fixed part plus a share of the rest, calibrated by bench/memory.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tunesmith.plan.params import Shape, count_parameters, lora_parameters, lora_targets

Method = Literal["full", "lora", "qlora"]
Optimizer = Literal["adamw", "adamw8bit"]

GB = 1e9
GIB = 2**30
NF4_BYTES = 0.5
# Double quantisation (QLoRA paper §3): 8-bit absmax per 64 weights + fp32 per 256 blocks = 0.127 bit.
NF4_CONSTANT_BYTES = (8 / 64 + 32 / (64 * 256)) / 8
LORA_BYTES = 4 + 4 + 8  # fp32 adapter, its fp32 gradient, two fp32 AdamW moments
ADAM8BIT_BYTES = 2  # two 8-bit moments per parameter (block-wise constants are negligible)
MAX_LOGITS_PER_CHUNK = 2**24  # train/loss.py: fp32 logits per head chunk
# Model types whose head loss is chunked (train/loss.py PLAIN_HEAD_MODEL_TYPES).
PLAIN_HEAD = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "olmo", "olmo2"}
    | {"starcoder2", "smollm3", "stablelm"}
)
# Overheads: a CUDA context takes ~0.5-1 GiB outside torch's allocator and the caching allocator
# keeps some slack; on CPU, glibc's arenas and oneDNN's kernel cache (bench/memory.py).
GPU_FIXED_OVERHEAD = 1 * GIB
GPU_OVERHEAD_SHARE = 0.08
CPU_FIXED_OVERHEAD = 0.05 * GB
CPU_OVERHEAD_SHARE = 0.05
CPU_RETAINED_SHARE = 0.75


@dataclass(frozen=True)
class Setup:
    """How training runs: what decides the memory besides the model."""

    method: Method = "lora"
    micro_batch: int = 1
    seq_len: int = 1024  # tokens per example after padding (the longest micro-batch decides)
    weight_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    compute: Literal["bf16", "fp32"] = "bf16"  # autocast dtype of matmuls (fp16 weights compute in fp16)
    lora_r: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    optimizer: Optimizer = "adamw"
    gradient_checkpointing: bool = False
    trained_fraction: float = 1.0  # share of positions that carry loss (the head only sees those)
    shards: int = 1  # ZeRO-3 / FSDP full sharding over this many devices
    device: Literal["gpu", "cpu"] = "gpu"
    trainable_token_rows: int = 0  # lora.train_stop_tokens: embedding rows trained beside LoRA
    allocator: Literal["system", "tcmalloc", "jemalloc"] = "system"  # CPU: the C allocator training runs under


@dataclass
class MemoryEstimate:
    terms: dict[str, int]  # bytes per term on one device
    parameters: int
    trainable_parameters: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def dominant(self, share: float = 0.2) -> list[str]:
        """Terms holding at least `share` of the total, largest first."""
        total = max(self.total, 1)
        return [k for k, v in sorted(self.terms.items(), key=lambda kv: -kv[1]) if v / total >= share]

    def to_json(self) -> dict[str, int]:
        return {**self.terms, "total": self.total}


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def weight_bytes(parameters: int, storage: Literal["float32", "bfloat16", "float16", "nf4"]) -> int:
    """Bytes to store `parameters` weights: 4 / 2 / 2, or NF4 with its quantisation constants."""
    if storage == "nf4":
        return round(parameters * (NF4_BYTES + NF4_CONSTANT_BYTES))
    return parameters * dtype_bytes(storage)


def activation_bytes_per_token(shape: Shape, setup: Setup) -> float:
    """Bytes autograd keeps per token for all decoder layers (measured coefficients, see module doc)."""
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    if shape.experts:  # each token runs through top-k experts of moe size; routing buffers ~ small
        i = max(i, 1) if not shape.experts_per_token else _moe_inter(shape) * shape.experts_per_token
    if not shape.gated_mlp:  # GPT-2: one up projection and GELU instead of gate, up, SiLU, product
        i = i // 2
    frozen = setup.method != "full"
    # bitsandbytes' 4-bit matmul is its own autograd function, outside autocast: with fp32 compute
    # (model.dtype auto on CPU) it saves fp32 inputs and returns fp32, so QLoRA saves in fp32 there.
    fp32_qlora = setup.method == "qlora" and setup.weight_dtype == "float32"
    if fp32_qlora:
        per_layer = 24 * h + 16 * i + 8 * kv
    elif setup.compute == "bf16" and setup.weight_dtype == "float32":
        per_layer = (24 if frozen else 30) * h + 8 * i + 4 * kv
    elif setup.compute == "bf16" or setup.weight_dtype != "float32":
        # bf16 weights: no fp32 residual stream, everything saved in 2 bytes.
        per_layer = (16 if frozen else 18) * h + 8 * i + 4 * kv
    else:
        per_layer = (24 if frozen else 32) * h + 16 * i + 8 * kv
    if frozen:
        width = 4 if setup.compute == "fp32" and setup.weight_dtype == "float32" else 2
        per_layer += width * setup.lora_r * len(lora_targets(shape, setup.lora_targets)) + 48
    if setup.gradient_checkpointing:
        # Only each layer's input stays; one layer's activations exist again during its recompute.
        return shape.layers * 4 * h + per_layer
    return shape.layers * per_layer


def _moe_inter(shape: Shape) -> int:
    expert = [m for m in shape.linears if m.copies > 1 and m.name == "down_proj"]
    return expert[0].d_in if expert else shape.intermediate_size


def estimate_memory(shape: Shape, setup: Setup) -> MemoryEstimate:
    """Bytes per term on one device for one training step at `setup` (see the module docstring)."""
    counts = count_parameters(shape)
    n, shards = counts.total, max(1, setup.shards)
    wbytes = dtype_bytes(setup.weight_dtype)
    notes: list[str] = []
    terms: dict[str, int] = {}
    if setup.method == "qlora":
        terms["weights"] = weight_bytes(counts.linear, "nf4") + 4 * (n - counts.linear)
        quantized_linear = True
    else:
        terms["weights"] = n * wbytes
        quantized_linear = False
    if quantized_linear and setup.device == "cpu":
        # Quantising on load: the Linear weights pass through RAM in full precision and glibc keeps
        # those pages for the process (bench/memory.py: RSS after loading ≈ this + the NF4 weights).
        terms["quantize_transient"] = wbytes * counts.linear
    if setup.compute == "bf16" and setup.weight_dtype == "float32" and not quantized_linear:
        terms["autocast_copies"] = 2 * counts.linear
    if setup.method == "full":
        trainable = n
        state = ADAM8BIT_BYTES if setup.optimizer == "adamw8bit" else 2 * wbytes
        terms["gradients"] = n * wbytes
        terms["optimizer"] = n * state
        terms["lora"] = 0
    else:
        trainable = (
            lora_parameters(shape, setup.lora_r, setup.lora_targets) + setup.trainable_token_rows * shape.hidden_size
        )
        terms["gradients"] = 0
        terms["optimizer"] = 0
        terms["lora"] = trainable * LORA_BYTES
    if shards > 1:  # ZeRO-3 / FSDP: every parameter-sized term is split; a layer is gathered at a time
        layer = sum(m.params for m in shape.linears) * (wbytes if not quantized_linear else 1)
        for key in ("weights", "gradients", "optimizer", "lora"):
            terms[key] = math.ceil(terms[key] / shards)
        terms["weights"] += 2 * layer  # the gathered layer and the next one, prefetched
        notes.append(f"sharded over {shards} devices (ZeRO-3 / FSDP full shard)")
    tokens = setup.micro_batch * setup.seq_len
    terms["activations"] = round(activation_bytes_per_token(shape, setup) * tokens)
    terms["logits"] = _logits_bytes(shape, setup, tokens)
    if setup.device == "cpu" and setup.allocator == "system":
        # glibc keeps the pages of the step's freed temporaries (norm upcasts, autocast casts, the
        # backward's activation gradients): ~0.75x the saved activations in bench/memory.py's
        # LoRA/QLoRA runs. Full fine-tuning's gradients are allocated into those pages instead.
        terms["allocator_retention"] = max(0, round(CPU_RETAINED_SHARE * terms["activations"]) - terms["gradients"])
    elif setup.device == "cpu":
        # tcmalloc / jemalloc return freed pages: gradients fill memory the activations released.
        terms["freed_during_backward"] = -min(terms["activations"], terms["gradients"])
    subtotal = sum(terms.values())
    if setup.device == "gpu":
        terms["overhead"] = round(GPU_FIXED_OVERHEAD + GPU_OVERHEAD_SHARE * subtotal)
    else:
        terms["overhead"] = round(CPU_FIXED_OVERHEAD + CPU_OVERHEAD_SHARE * subtotal)
    if shape.model_type not in PLAIN_HEAD:
        notes.append(
            f"{shape.model_type}: the loss goes through the model's own forward, full-vocabulary logits for every position"
        )
    return MemoryEstimate(terms, n, trainable, notes)


def _logits_bytes(shape: Shape, setup: Setup, tokens: int) -> int:
    v, h = shape.vocab_size, shape.hidden_size
    trained = max(1, round(tokens * setup.trained_fraction))
    head_trains = setup.method == "full"
    if shape.model_type in PLAIN_HEAD:
        chunk = min(trained, max(1, MAX_LOGITS_PER_CHUNK // v))
        logits = chunk * v * (4 + 2 + 2)  # fp32 logits, the bf16 matmul result, the bf16 gradient
        rows = trained * h * 4 * 2  # the gathered rows and their gradient
        head_grad = v * h * 4 if head_trains else 0
        return logits + rows + head_grad
    # logits in the compute dtype, their fp32 upcast, log-softmax and its gradient: ~14 bytes per entry.
    return tokens * v * 14


@dataclass(frozen=True)
class Fit:
    fits: bool
    micro_batch: int  # largest that fits (0: none)
    grad_accum: int
    memory: MemoryEstimate  # at the chosen micro-batch (or at 1 when nothing fits)
    budget: int  # bytes per device


def solve_fit(
    shape: Shape, setup: Setup, *, budget: int, effective_batch: int, max_micro_batch: int | None = None
) -> Fit:
    """The largest micro-batch (≤ effective batch per device, ≤ `max_micro_batch`) whose estimate
    fits `budget` bytes per device, and the accumulation reaching the effective batch as the
    recipe computes it (ceil(effective / (micro × devices)))."""
    devices = max(1, setup.shards)
    cap = max(1, math.ceil(effective_batch / devices))
    if max_micro_batch:
        cap = min(cap, max_micro_batch)
    best = 0
    lo, hi = 1, cap  # memory grows with the micro-batch: bisect
    while lo <= hi:
        mid = (lo + hi) // 2
        if estimate_memory(shape, _with(setup, micro_batch=mid)).total <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    micro = best or 1
    accum = max(1, math.ceil(effective_batch / (micro * devices)))
    return Fit(best > 0, best, accum if best else 0, estimate_memory(shape, _with(setup, micro_batch=micro)), budget)


def _with(setup: Setup, **changes) -> Setup:
    from dataclasses import replace

    return replace(setup, **changes)


@dataclass(frozen=True)
class Alternative:
    change: str  # what to change, as a config override or a flag
    why: str
    micro_batch: int
    total: int  # bytes per device at that micro-batch


def alternatives(
    shape: Shape, setup: Setup, *, budget: int, effective_batch: int, max_gpus: int = 64
) -> list[Alternative]:
    """What would fit when nothing does, ranked from the least to the most disruptive change:
    gradient checkpointing (same result, ~30% more compute), 8-bit Adam (full FT), LoRA instead of
    full fine-tuning, QLoRA, more GPUs (sharded), and last shorter sequences (they cut the data)."""
    candidates: list[tuple[str, str, Setup]] = []
    if not setup.gradient_checkpointing:
        candidates.append(
            (
                "gradient checkpointing",
                "recomputes activations in backward: ~30% more compute, same result",
                _with(setup, gradient_checkpointing=True),
            )
        )
    if setup.method == "full" and setup.optimizer != "adamw8bit":
        candidates.append(
            ("8-bit Adam", "optimizer moments in 2 bytes instead of 2×4", _with(setup, optimizer="adamw8bit"))
        )
    if setup.method == "full":
        candidates.append(
            ("--method lora", "trains adapters only: no full gradients or optimizer state", _with(setup, method="lora"))
        )
    if setup.method != "qlora":
        candidates.append(
            (
                "--method qlora",
                "4-bit base weights (~0.52 byte per weight) with LoRA adapters",
                _with(setup, method="qlora"),
            )
        )
    for n in (2, 4, 8, 16, 32, 64):
        if setup.shards < n <= max_gpus:
            candidates.append(
                (f"--gpus {n}", "ZeRO-3 / FSDP shard weights, gradients and optimizer state", _with(setup, shards=n))
            )
    out: list[Alternative] = []
    for change, why, alt in candidates:
        fit = solve_fit(shape, alt, budget=budget, effective_batch=effective_batch)
        if fit.fits:
            out.append(Alternative(change, why, fit.micro_batch, fit.memory.total))
            if change.startswith("--gpus"):
                break  # the fewest GPUs that fit is enough
    seq = setup.seq_len // 2
    while seq >= 128:
        fit = solve_fit(shape, _with(setup, seq_len=seq), budget=budget, effective_batch=effective_batch)
        if fit.fits:
            out.append(
                Alternative(
                    f"--seq-len {seq}",
                    "shorter examples: longer ones are dropped or cut",
                    fit.micro_batch,
                    fit.memory.total,
                )
            )
            break
        seq //= 2
    return out
