"""What `tunesmith train` takes from the plan: the licence gate, `micro_batch: auto`, the cap on
`max_tokens_per_batch`, and the plan printed before step 1 and saved as plan.json.

The recipe calls these with what it knows (the config, the encoded examples' lengths, the number of
processes, the precision it resolved); they read only the model's small files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith import allocator
from tunesmith.config import Config, ConfigError
from tunesmith.plan.hardware import local_budget
from tunesmith.plan.kind import detect_kind
from tunesmith.plan.license import PERMISSIVE, detect_license
from tunesmith.plan.memory import Fit, Setup, estimate_memory, solve_fit
from tunesmith.plan.params import PlanError, count_parameters, shape_of
from tunesmith.plan.planner import Plan, model_files
from tunesmith.runs import PLAN_FILE, write_json

MAX_AUTO_MICRO_BATCH = 64  # more examples per forward than this gains no speed on any device we plan for


def check_license(config: Config) -> None:
    """Refuse a restricted or unknown licence until `model.license_acknowledged: true`, saying why.
    A model whose files cannot be found is left to the loader, which says so in its own words."""
    if config.model.license_acknowledged:
        return
    try:
        directory = model_files(config.model.name_or_path)
    except PlanError:
        return
    info = detect_license(directory, config.model.name_or_path)
    if info.cls == PERMISSIVE:
        return
    raise ConfigError(
        f"model.name_or_path={config.model.name_or_path}: licence {info.cls} ({info.why}). "
        "Read the licence; if your use is allowed, set model.license_acknowledged=true "
        "(in the config, or as an override on the command line)"
    )


@dataclass(frozen=True)
class Batching:
    micro_batch: int  # where to start (the out-of-memory fallback may still halve it)
    max_tokens_per_batch: int | None
    notes: list[str]


def _device_budget() -> tuple[str, int, str]:
    """This machine's budget for one process: GPU memory, or on CPU the RAM available now (the
    machine may be shared; the total would overcommit it)."""
    kind, total, where = local_budget()
    # Every rank must choose the same micro-batch: the RAM available differs from moment to
    # moment, so several processes plan on the total they share, divided among them.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if kind == "cpu" and world > 1:
        return kind, total // world, f"CPU, {total / 1e9:.1f} GB RAM shared by {world} processes"
    if kind == "cpu":
        available = _mem_available()
        if available:
            return kind, available, f"CPU, {available / 1e9:.1f} GB RAM available"
    return kind, total, where


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _setup(
    config: Config,
    *,
    micro_batch: int,
    seq_len: int,
    trained_fraction: float,
    precision: str,
    weight_dtype: str,
    device: str,
    shards: int,
    stop_rows: int,
) -> Setup:
    lora = config.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
    return Setup(
        method=config.train.method,
        micro_batch=micro_batch,
        seq_len=seq_len,
        weight_dtype=weight_dtype,  # type: ignore[arg-type]
        compute="bf16" if precision == "bf16" else "fp32",
        lora_r=lora.r,
        lora_targets=targets,
        trained_fraction=trained_fraction,
        shards=shards,
        device=device,  # type: ignore[arg-type]
        trainable_token_rows=stop_rows if config.train.method != "full" and lora.train_stop_tokens else 0,
        # The recipe plans from inside the training process: the allocator it runs under.
        allocator=allocator.running() if device == "cpu" else "system",  # type: ignore[arg-type]
    )


def _weight_dtype(config: Config, device: str) -> str:
    from tunesmith.models.load import resolve_dtype

    dtype = config.model.dtype
    if dtype == "auto":
        return "bfloat16" if device == "gpu" and str(resolve_dtype("auto")) == "torch.bfloat16" else "float32"
    return dtype


def padded(length: int, multiple: int) -> int:
    return math.ceil(length / multiple) * multiple


def choose_batching(
    config: Config,
    *,
    lengths: list[int],
    trained_fraction: float,
    precision: str,
    world: int,
    sharded: bool,
    stop_rows: int = 0,
) -> Batching:
    """The micro-batch to start from (`micro_batch: auto`: the largest the plan fits on this
    device) and `max_tokens_per_batch` capped to what fits. A resumed run reads both from its
    plan.json, since its data position refers to that batch plan."""
    cfg = config.train
    saved = config.run_dir / PLAN_FILE
    if saved.is_file():
        try:
            previous = json.loads(saved.read_text(encoding="utf-8")).get("batching", {})
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        if previous.get("max_tokens_per_batch") and cfg.max_tokens_per_batch:
            return Batching(int(previous.get("micro_batch") or 1), int(previous["max_tokens_per_batch"]), [])
    wanted_micro = cfg.micro_batch if cfg.micro_batch != "auto" else None
    if wanted_micro is not None and not cfg.max_tokens_per_batch:
        return Batching(int(wanted_micro), None, [])
    shape = shape_of(model_files(config.model.name_or_path))
    device, budget, where = _device_budget()
    seq = padded(max(lengths), cfg.pad_to_multiple_of)
    make = lambda micro, s=seq: _setup(  # noqa: E731
        config,
        micro_batch=micro,
        seq_len=s,
        trained_fraction=trained_fraction,
        precision=precision,
        weight_dtype=_weight_dtype(config, device),
        device=device,
        shards=world if sharded else 1,
        stop_rows=stop_rows,
    )
    notes: list[str] = []
    micro = wanted_micro
    if micro is None:
        fit = solve_fit(
            shape, make(1), budget=budget, effective_batch=cfg.effective_batch, max_micro_batch=MAX_AUTO_MICRO_BATCH
        )
        micro = max(1, fit.micro_batch)
        notes.append(
            f"micro_batch auto: {micro} (the largest the plan fits in {where}"
            + ("" if fit.fits else "; not even 1 fits by the plan: trying anyway, the out-of-memory fallback stands by")
            + ")"
        )
    cap_tokens = None
    if cfg.max_tokens_per_batch:
        # Tokens per forward that fit: memory grows with tokens whatever their split into rows.
        lo, hi, best = seq, max(seq, cfg.max_tokens_per_batch), seq
        while lo <= hi:
            mid = (lo + hi) // 2
            if estimate_memory(shape, make(1, mid)).total <= budget:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        cap_tokens = min(cfg.max_tokens_per_batch, max(best, max(lengths)))
        if cap_tokens < cfg.max_tokens_per_batch:
            notes.append(
                f"max_tokens_per_batch capped {cfg.max_tokens_per_batch:,} → {cap_tokens:,} (what the plan fits in {where})"
            )
    return Batching(micro, cap_tokens, notes)


def training_plan(
    config: Config,
    *,
    lengths: list[int],
    trained_fraction: float,
    micro_batch: int,
    accumulation: int,
    precision: str,
    weight_dtype: str | None,
    world: int,
    sharded: bool,
    stop_rows: int = 0,
    batching: Batching | None = None,
) -> Plan:
    """The plan for the run about to start, at the layout the recipe chose (printed before step 1)."""
    directory = model_files(config.model.name_or_path)
    shape = shape_of(directory)
    counts = count_parameters(shape)
    device, budget, where = _device_budget()
    setup = _setup(
        config,
        micro_batch=micro_batch,
        seq_len=padded(max(lengths), config.train.pad_to_multiple_of),
        trained_fraction=trained_fraction,
        precision=precision,
        # None (QLoRA): the compute dtype the 4-bit layers were loaded with, as the loader resolved it.
        weight_dtype=weight_dtype or _weight_dtype(config, device),
        device=device,
        shards=world if sharded else 1,
        stop_rows=stop_rows,
    )
    memory = estimate_memory(shape, setup)
    fit = Fit(memory.total <= budget, micro_batch, accumulation, memory, budget)
    plan = Plan(
        model=config.model.name_or_path,
        method=config.train.method,
        shape=shape,
        parameters=counts.total,
        active_parameters=counts.active,
        trainable_parameters=memory.trainable_parameters,
        setup=setup,
        fit=fit,
        device=where,
        gpus=world,
        effective_batch=micro_batch * accumulation * world,
        license=detect_license(directory, config.model.name_or_path),
        kind=detect_kind(directory, config.model.name_or_path),
        notes=list(batching.notes) if batching else [],
    )
    return plan


def save_plan(plan: Plan, run_dir: Path, batching: Batching | None = None, extra: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / PLAN_FILE
    body = plan.to_json()
    if batching is not None:
        body["batching"] = {"micro_batch": batching.micro_batch, "max_tokens_per_batch": batching.max_tokens_per_batch}
    body.update(extra or {})
    write_json(path, body)
    return path
