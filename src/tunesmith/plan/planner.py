"""The plan stage's entry: `plan_model` reads a model's small files and says what training it costs.

Parameters (total, active, trainable), memory per term on one device, the largest micro-batch that
fits and the accumulation that reaches the effective batch (or ranked alternatives), time and cost
on a named GPU from the data's token count, base vs instruct, and the licence. No weights are
downloaded or loaded: config.json, the tokenizer config, the model card and LICENSE are enough.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import allocator
from tunesmith.plan.hardware import DEFAULT_MFU, Gpu, find_gpu, hours, local_budget, training_flops_per_token
from tunesmith.plan.kind import KindInfo, detect_kind
from tunesmith.plan.license import LicenseInfo, detect_license
from tunesmith.plan.memory import Alternative, Fit, Method, Setup, alternatives, estimate_memory, solve_fit
from tunesmith.plan.params import PlanError, Shape, count_parameters, shape_of

SMALL_FILES = (
    "config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "README.md",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
)
DEFAULT_SEQ_LEN = 1024  # config.data.max_seq_len's default
DEFAULT_EFFECTIVE_BATCH = 16  # config.train.effective_batch's default
DEFAULT_EPOCHS = 3.0


@dataclass
class DataCounts:
    """What the data stage counted: rows that encode, their tokens, and how many carry loss."""

    rows: int
    tokens: int  # per epoch, after the chat template
    trained_tokens: int
    max_tokens: int
    source: str

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / max(self.tokens, 1)


@dataclass
class TimeCost:
    gpu: str
    gpus: int
    tokens_per_epoch: int
    epochs: float
    steps: int
    mfu: float
    flops: float
    hours: float
    cost: float | None  # US$, at price_per_hour × gpus


@dataclass
class Plan:
    model: str
    method: str
    shape: Shape
    parameters: int
    active_parameters: int
    trainable_parameters: int
    setup: Setup
    fit: Fit
    device: str  # what the budget is: a GPU name, "CPU, 24 GB RAM", or "24.0 GB"
    gpus: int
    effective_batch: int
    license: LicenseInfo
    kind: KindInfo
    alternatives: list[Alternative] = field(default_factory=list)
    time: TimeCost | None = None
    data: DataCounts | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def memory(self):
        return self.fit.memory

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (keys the issue promises, and a few more)."""
        return {
            "model": self.model,
            "model_type": self.shape.model_type,
            "method": self.method,
            "parameters": self.parameters,
            "active_parameters": self.active_parameters,
            "trainable_parameters": self.trainable_parameters,
            "memory": self.memory.to_json(),
            "dominant": self.memory.dominant(),
            "budget": self.fit.budget,
            "device": self.device,
            "gpus": self.gpus,
            "fits": self.fit.fits,
            "micro_batch": self.fit.micro_batch,
            "grad_accum": self.fit.grad_accum,
            "effective_batch": self.effective_batch,
            "seq_len": self.setup.seq_len,
            "weight_dtype": "nf4" if self.method == "qlora" else self.setup.weight_dtype,
            "compute": self.setup.compute,
            "gradient_checkpointing": self.setup.gradient_checkpointing,
            "alternatives": [a.__dict__ for a in self.alternatives],
            "license": self.license.to_json(),
            "model_kind": self.kind.kind,
            "kind_evidence": self.kind.evidence,
            "kind_advice": self.kind.advice,
            "time": None if self.time is None else self.time.__dict__,
            "data": None if self.data is None else self.data.__dict__,
            "notes": self.notes,
        }


def model_files(name_or_path: str | Path) -> Path:
    """A local directory holding the model's small files: the directory itself, or for a hub id
    those files fetched into (or found in) the hub cache. Never weights."""
    from tunesmith.models.load import ModelLoadError, locate

    try:
        source, offline = locate(name_or_path)
    except ModelLoadError as e:
        raise PlanError(str(e)) from None
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    folder: Path | None = None
    for name in SMALL_FILES:
        try:
            path = hf_hub_download(source, name, local_files_only=offline)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except Exception as e:  # gated repos, network errors: the config is required, the rest optional
            if name == "config.json":
                raise PlanError(f"{source}: could not fetch config.json ({type(e).__name__}: {e})") from None
            continue
        folder = Path(path).parent
    if folder is None or not (folder / "config.json").is_file():
        raise PlanError(f"{source}: no config.json on the hub or in the local cache")
    return folder


def read_data_counts(path: str | Path, model_dir: Path | None, max_seq_len: int) -> DataCounts:
    """Token counts from a `data check --report` JSON (its stats), or by running the data stage's
    check over a data file with the model's tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"--data {path}: no such file")
    if path.suffix == ".json":
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            report = None
        stats = report.get("stats", {}) if isinstance(report, dict) else {}
        if "tokens" in stats:
            return DataCounts(
                rows=int(stats["encoded_rows"]),
                tokens=int(stats["tokens"]["total"]),
                trained_tokens=int(stats.get("trained_tokens_after_cut", stats.get("trained_tokens", 0))),
                max_tokens=int(stats["tokens"]["max"]),
                source=f"{path} (data check report)",
            )
    if model_dir is None:
        raise PlanError(f"--data {path}: counting tokens needs the model's tokenizer")
    from tunesmith.config import DataConfig
    from tunesmith.data.check import check_file
    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    report = check_file(path, config=DataConfig(path=str(path), max_seq_len=max_seq_len), tokenizer=tokenizer)
    stats = report.stats
    if "tokens" not in stats:
        raise PlanError(
            f"--data {path}: no row could be encoded with {model_dir}'s tokenizer (see `tunesmith data check`)"
        )
    return DataCounts(
        rows=int(stats["encoded_rows"]),
        tokens=int(stats["tokens"]["total"]),
        trained_tokens=int(stats["trained_tokens_after_cut"]),
        max_tokens=int(stats["tokens"]["max"]),
        source=f"{path} (tokenized with {model_dir.name})",
    )


def _precision(device: str, gpu: Gpu | None, weight_dtype: str) -> tuple[str, str]:
    """(weight dtype, compute) as the trainer resolves `model.dtype` and `train.mixed_precision`
    `auto`: bf16 weights and compute on GPUs that have bf16 (Ampere and newer), fp32 weights with
    bf16 autocast on CPUs with native bf16, fp32 elsewhere."""
    if device == "gpu":
        bf16 = gpu is None or gpu.name not in {"T4", "V100"}
        weights = weight_dtype if weight_dtype != "auto" else ("bfloat16" if bf16 else "float32")
        return weights, "bf16" if bf16 else "fp32"
    from tunesmith.models.load import native_bf16

    return ("float32" if weight_dtype == "auto" else weight_dtype), "bf16" if native_bf16() else "fp32"


def plan_model(
    model: str | Path,
    *,
    method: Method = "lora",
    seq_len: int | None = None,
    micro_batch: int | None = None,
    effective_batch: int = DEFAULT_EFFECTIVE_BATCH,
    gpu: str | None = None,
    gpu_memory: int | None = None,
    gpus: int = 1,
    data: str | Path | None = None,
    epochs: float = DEFAULT_EPOCHS,
    lora_r: int = 16,
    lora_targets: str | tuple[str, ...] = "all-linear",
    weight_dtype: str = "auto",
    gradient_checkpointing: bool = False,
    price_per_hour: float | None = None,
    mfu: float | None = None,
    trainable_token_rows: int = 0,
    max_seq_len: int = DEFAULT_SEQ_LEN,
) -> Plan:
    """Plan fine-tuning `model` (hub id or directory). `micro_batch` None: the largest that fits;
    given: checked as it is. Budget: `gpu_memory` bytes, else the named `gpu`'s memory, else this
    machine's first GPU (or its RAM). `gpus` > 1 plans ZeRO-3 / FSDP sharding."""
    if gpus < 1 or effective_batch < 1 or (micro_batch is not None and micro_batch < 1):
        raise PlanError("--gpus, --effective-batch and --micro-batch must be at least 1")
    directory = model_files(model)
    shape = shape_of(directory)
    counts = count_parameters(shape)
    notes: list[str] = []
    named = find_gpu(gpu) if gpu else None
    if gpu_memory is not None:
        device, budget, where = (
            "gpu",
            int(gpu_memory),
            f"{gpu_memory / 1e9:.1f} GB per GPU" + (f" ({named.name})" if named else ""),
        )
    elif named is not None:
        device, budget, where = "gpu", named.memory, named.name
    else:
        device, budget, where = local_budget()
        notes.append(f"no --gpu given: planning for this machine ({where})")
    counted = read_data_counts(data, directory, max_seq_len) if data is not None else None
    if seq_len is None:
        seq_len = min(counted.max_tokens, max_seq_len) if counted else max_seq_len
    weights, compute = _precision(device, named, weight_dtype)
    setup = Setup(
        method=method,
        micro_batch=micro_batch or 1,
        seq_len=seq_len,
        weight_dtype=weights,  # type: ignore[arg-type]
        compute=compute,  # type: ignore[arg-type]
        lora_r=lora_r,
        lora_targets=lora_targets,
        gradient_checkpointing=gradient_checkpointing,
        trained_fraction=counted.trained_fraction if counted else 1.0,
        shards=gpus,
        device=device,  # type: ignore[arg-type]
        trainable_token_rows=trainable_token_rows,
        allocator=allocator.planned() if device == "cpu" else "system",  # type: ignore[arg-type]
    )
    if micro_batch is not None:
        memory = estimate_memory(shape, setup)
        accum = max(1, math.ceil(effective_batch / (micro_batch * gpus)))
        fits = memory.total <= budget
        fit = Fit(fits, micro_batch if fits else 0, accum if fits else 0, memory, budget)
    else:
        fit = solve_fit(shape, setup, budget=budget, effective_batch=effective_batch)
    alts = [] if fit.fits else alternatives(shape, setup, budget=budget, effective_batch=effective_batch)
    notes.extend(fit.memory.notes)
    time = None
    if counted is not None:
        priced = named or (find_gpu("A100-80GB") if device == "cpu" else None)
        if priced is not None:
            if named is None:
                notes.append("time and cost shown for an A100-80GB (name yours with --gpu)")
            rate = mfu or DEFAULT_MFU[method]
            flops_token = training_flops_per_token(counts.active, shape.layers, seq_len, shape.q_dim, method)
            total_tokens = counted.tokens * epochs
            h = hours(total_tokens, flops_token, priced, gpus, rate)
            price = price_per_hour if price_per_hour is not None else priced.price_per_hour
            time = TimeCost(
                gpu=priced.name,
                gpus=gpus,
                tokens_per_epoch=counted.tokens,
                epochs=epochs,
                steps=math.ceil(math.ceil(counted.rows / effective_batch) * epochs),
                mfu=rate,
                flops=total_tokens * flops_token,
                hours=h,
                cost=round(h * price * gpus, 2),
            )
    trainable = fit.memory.trainable_parameters
    return Plan(
        model=str(model),
        method=method,
        shape=shape,
        parameters=counts.total,
        active_parameters=counts.active,
        trainable_parameters=trainable,
        setup=setup,
        fit=fit,
        device=where,
        gpus=gpus,
        effective_batch=effective_batch,
        license=detect_license(directory, str(model)),
        kind=detect_kind(directory, str(model)),
        alternatives=alts,
        time=time,
        data=counted,
        notes=notes,
    )
