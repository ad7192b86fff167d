"""The training recipe: setup → train → validate → save, read top to bottom.

Design decision: our own loop on `accelerate`, not the HF Trainer. The guard rails need control the
Trainer hides or gets wrong:
- the loss is normalised by the trained-token count of the whole accumulation window across all
  ranks (train/loss.py), which needs the window's batches known before its first backward;
- length-grouped micro-batches come from our own plan (train/batching.py), and the position in that
  plan is part of the checkpoint, so a resumed run equals an uninterrupted one bit for bit;
- every step's loss and gradient norm are checked before the optimizer applies them, and a
  NaN stops (or retries from the last good checkpoint) instead of being skipped;
- checkpoints are our own crash-safe format (train/checkpoint.py), loadable without pickle.
`accelerate.Accelerator` does everything distributed (DDP under torchrun, DeepSpeed, FSDP: see
tunesmith/accelerate_configs); there is no home-made distributed code here. Each rank computes the
same batch plan from the same seed and takes every world-th micro-batch of each window.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import TensorBoardTracker
from accelerate.utils import DistributedType, set_seed
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import get_cosine_schedule_with_warmup

from tunesmith.config import Config, ConfigError, dump_config
from tunesmith.data.template import IGNORE_INDEX
from tunesmith.runs import (
    CONFIG_FILE,
    FINAL_DIR,
    LOSS_PLOT,
    MANIFEST_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    build_manifest,
    changed_keys,
    run_lock,
    write_json,
    write_jsonl,
    write_text,
)
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.batching import Padding, collate, plan_batches
from tunesmith.train.checkpoint import TrainState
from tunesmith.train.guards import (
    COMPLETED,
    INTERRUPTED,
    NON_FINITE,
    OVERFITTING,
    GuardState,
    StopRequest,
    TrainingInterrupted,
    TrainingStopped,
    fit_micro_batch,
    nan_advice,
    non_finite,
    observe_eval,
)
from tunesmith.train.loss import trained_token_loss
from tunesmith.train.plots import plot_loss

__all__ = ["TrainResult", "TrainingInterrupted", "TrainingStopped", "train"]

MAX_NAN_RETRIES = 3  # each retry halves the LR; three halvings (1/8) and still NaN is not an LR problem


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None
    best_step: int | None
    best_val_loss: float | None
    stop_reason: str  # guards.COMPLETED / OVERFITTING / NON_FINITE
    steps: int
    micro_batch: int
    accumulation: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Layout:
    """How examples become optimizer steps; fixed for a run (a resume reuses the checkpoint's)."""

    micro_batch: int
    accumulation: int
    world: int
    steps_per_epoch: int
    total_steps: int
    eval_interval: int  # optimizer steps between validations (and checkpoints)

    @property
    def per_step(self) -> int:  # micro-batches per optimizer step, all ranks together
        return self.accumulation * self.world


class _LossModel(torch.nn.Module):
    """The model with our loss as its forward. DDP, FSDP and DeepSpeed synchronise gradients only
    for computation that runs through the wrapped module's forward, and trained_token_loss calls
    the decoder and head directly, so the loss itself must be the forward that gets wrapped."""

    def __init__(self, model: torch.nn.Module, *, bf16: bool):
        super().__init__()
        self.model = model
        self.bf16 = bf16
        # FSDP's transformer-based wrapping looks for the decoder-layer classes on the module it gets.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(base, "_no_split_modules", None)

    def forward(self, batch: dict[str, torch.Tensor], normalizer: float) -> tuple[torch.Tensor, int]:
        # Our own autocast rather than Accelerator(mixed_precision=...): accelerate's state is a
        # per-process singleton, so a second train() in one process with another precision fails.
        with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return trained_token_loss(self.model, batch, normalizer=normalizer)


class _NonFinite(Exception):
    def __init__(self, step: int, cause: str):
        self.step, self.cause = step, cause


@dataclass
class _Session:
    """What stays fixed for a whole `train()` call, NaN retries included."""

    config: Config
    accelerator: Accelerator
    console: Console
    tokenizer: Any
    train_set: list[Any]
    val_set: list[Any]
    padding: Padding
    precision: str  # "bf16" or "fp32": train.mixed_precision resolved
    notes: list[str]
    started: float
    batching: Any = None  # plan.training.Batching: the starting micro-batch and the tokens-per-batch cap


@dataclass
class _Attempt:
    """What a NaN retry rebuilds from the last good checkpoint."""

    model: Any  # the peft/transformers model, unwrapped
    loss_model: Any  # _LossModel, as accelerate prepared it
    optimizer: Any
    scheduler: Any
    state: TrainState
    layout: _Layout


# ============================================================================ entry point


def train(config: Config, *, resume: bool | None = None, merge: bool = False) -> TrainResult:
    """Fine-tune `config.model` on `config.data`; everything lands in `config.run_dir`.

    `resume` None follows `train.resume` (auto: continue from the newest complete checkpoint).
    `merge` also writes a merged full model into final/merged (LoRA/QLoRA).
    Raises TrainingStopped (CLI exit 1) when a guard rail stops training, TrainingInterrupted (CLI
    exit 130) after SIGINT/SIGTERM, once the step in progress is done and checkpointed. The run
    directory is locked (runs.run_lock) for the whole call; a run that fails before its first
    checkpoint removes the run directory it created, so no half-started run is left to resume.
    """
    main = int(os.environ.get("RANK", "0")) == 0
    created = config.run_dir.absolute()  # the topmost folder this call creates (runs/ too, the first time)
    while not created.parent.exists() and created.parent != created.parent.parent:
        created = created.parent
    created = None if created.exists() else created
    try:
        with run_lock(config.run_dir) if main else contextlib.nullcontext():
            return _train(config, resume, merge)
    except (TrainingStopped, TrainingInterrupted):
        raise
    except BaseException:
        if main and created is not None and ckpt.latest_complete(config.run_dir) is None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _train(config: Config, resume: bool | None, merge: bool) -> TrainResult:
    _bound_onednn_cache()
    session, resume_from = _setup(config, config.train.resume == "auto" if resume is None else resume)
    lr_scale: float | None = None  # set by `on_nan: retry`
    retry_row: dict[str, Any] | None = None
    for attempt in range(MAX_NAN_RETRIES + 1):
        set_seed(config.train.seed)
        run = _prepare(session, resume_from, lr_scale)
        if attempt == 0:
            _print_plan(session, run)
            _start_trackers(session.accelerator, config, run.state.step)
        if retry_row:
            _log(session, run.state, {"step": run.state.step, **retry_row})
        try:
            reason = _fit(session, run)
            break
        except _NonFinite as nf:
            last_good = ckpt.latest_complete(config.run_dir)
            _log(session, run.state, {"step": nf.step, "event": NON_FINITE, "cause": nf.cause})
            if config.train.on_nan == "retry" and attempt < MAX_NAN_RETRIES:
                lr_scale = run.state.lr_scale / 2
                retry_row = {"event": "retry", "cause": nf.cause, "at_step": nf.step, "lr_scale": lr_scale}
                session.console.print(
                    f"[yellow]{nf.cause} is NaN/inf at step {nf.step}: retrying from "
                    f"{last_good or 'the start'} at {lr_scale:g} × the learning rate[/]"
                )
                resume_from = last_good
                session.accelerator.free_memory(run.model, run.loss_model, run.optimizer)
                continue
            _finish(session, run, NON_FINITE, merge)
            dtype = next(run.model.parameters()).dtype
            lr = config.train.learning_rate * run.state.lr_scale
            advice = nan_advice(lr=lr, dtype=dtype, grad_clip=config.train.grad_clip)
            raise TrainingStopped(step=nf.step, cause=nf.cause, advice=advice, last_good=last_good) from None
    result = _finish(session, run, reason, merge)
    if reason == INTERRUPTED:
        raise TrainingInterrupted(step=result.steps, checkpoint=ckpt.latest_complete(config.run_dir))
    return result


# ============================================================================ setup


def _bound_onednn_cache() -> None:
    """Cap oneDNN's cache of compiled CPU kernels (one per matmul shape and direction) unless the
    user set it. Its default of 1,024 held ~0.4 GB of a 15.7M Llama's bf16 LoRA peak (2.32 GB vs
    1.95 GB with 64; bench/train.py, steps within noise of each other). oneDNN reads the variable
    when it first compiles a kernel, so this only takes effect if nothing in the process has yet."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def _setup(config: Config, resume: bool) -> tuple[_Session, Path | None]:
    """Accelerator, run files, tokenizer, encoded train/val examples."""
    from tunesmith.data.template import load_tokenizer
    from tunesmith.plan.training import check_license

    check_license(config)  # before anything loads or is written: a refused licence leaves no run directory

    # TensorBoard joins in _start_trackers (it needs the resume step); wandb/mlflow by name.
    remote = [name for name in config.train.report_to if name != "tensorboard"]
    # cpu=True on a machine without any accelerator: only then does accelerate set up gloo DDP under
    # torchrun; otherwise every rank silently trains its own copy (checked below).
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    accelerator = Accelerator(cpu=not has_accelerator, log_with=remote or None, project_dir=str(config.run_dir))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"launched as {launched} processes but accelerate runs {accelerator.num_processes}: "
            "use torchrun or `accelerate launch` with a matching --num_processes"
        )
    console = Console(quiet=not accelerator.is_main_process, highlight=False)
    resume_from = _resume_point(config.run_dir, resume, console) if accelerator.is_main_process else None
    resume_from = _broadcast_path(accelerator, resume_from)
    tokenizer = load_tokenizer(
        config.model.name_or_path,
        chat_template=config.model.chat_template,
        trust_remote_code=config.model.trust_remote_code,
    )
    train_set, val_set, rows, notes = _load_examples(config, tokenizer)
    precision = _mixed_precision(config)
    if accelerator.is_main_process:
        _write_run_files(config, resume_from, rows, precision, console)
    accelerator.wait_for_everyone()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padding = Padding(pad_id, config.train.pad_to_multiple_of)
    session = _Session(
        config, accelerator, console, tokenizer, train_set, val_set, padding, precision, notes, time.time()
    )
    session.batching = _batching(session)
    session.notes.extend(session.batching.notes)
    return session, resume_from


def _broadcast_path(accelerator: Accelerator, path: Path | None) -> Path | None:
    """The main process's choice, on every rank (it alone verifies and sets damaged checkpoints aside)."""
    if accelerator.num_processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    box = [str(path) if path else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0]) if box[0] else None


def _batching(session: _Session) -> Any:
    """The plan's choice of the starting micro-batch (`micro_batch: auto`) and tokens-per-batch cap."""
    from tunesmith.plan.training import choose_batching

    data = session.train_set
    return choose_batching(
        session.config,
        lengths=[len(e.input_ids) for e in data],
        trained_fraction=sum(_trained(e) for e in data) / max(1, sum(len(e.input_ids) for e in data)),
        precision=session.precision,
        world=session.accelerator.num_processes,
        sharded=session.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP),
        stop_rows=len(_stop_token_ids(session)),
    )


def _mixed_precision(config: Config) -> str:
    """`bf16` or `fp32`, `auto` resolved. _LossModel applies it, to training and validation alike.
    Under `accelerate launch`, the launcher config's mixed_precision (DeepSpeed's and FSDP's own
    bf16 handling) applies as well."""
    from tunesmith.models.load import native_bf16

    if config.train.mixed_precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return config.train.mixed_precision


def _resume_point(run_dir: Path, resume: bool, console: Console) -> Path | None:
    latest = ckpt.latest_complete(run_dir)
    if latest is not None and not resume:
        raise ConfigError(
            f"{run_dir} already holds checkpoints ({latest.name}); continue it with --resume "
            "(train.resume=auto) or start a separate run with another name (name=...)"
        )
    if not resume or latest is None:
        return None
    intact, damaged = ckpt.latest_intact(run_dir)  # checksums: a damaged newest one falls back
    for note in damaged:
        console.print(f"[yellow]{note}[/]")
    if damaged:
        console.print(f"[yellow]resuming from the newest intact checkpoint: {intact or 'none, starting over'}[/]")
    return intact


def _write_run_files(config: Config, resume_from: Path | None, rows: int, precision: str, console: Console) -> None:
    from tunesmith.split.training import split_record

    path = config.run_dir / CONFIG_FILE
    text = dump_config(config)
    if resume_from is not None and path.is_file() and path.read_text(encoding="utf-8") != text:
        changed = changed_keys(path.read_text(encoding="utf-8"), text)
        console.print(f"[yellow]resuming with a changed config: {', '.join(changed) or 'formatting only'}[/]")
    manifest = build_manifest(
        "train", data_path=config.data.path, rows=rows, resumed_from=resume_from, mixed_precision=precision
    )
    manifest["split"] = split_record(config)
    previous = config.run_dir / MANIFEST_FILE
    if resume_from is not None and previous.is_file():
        # The checkpoint's data position indexes the old examples: resuming on other data would
        # silently skip or repeat rows.
        old_sha = json.loads(previous.read_text(encoding="utf-8")).get("data", {}).get("sha256")
        if old_sha not in (None, manifest["data"]["sha256"]):
            raise ConfigError(
                f"{config.data.path} changed since {config.run_dir} started (sha256 {old_sha[:12]}… → "
                f"{manifest['data']['sha256'][:12]}…); start a new run (name=...) to train on the new data"
            )
    write_text(path, text)
    write_json(previous, manifest)


def _load_examples(config: Config, tokenizer: Any) -> tuple[list[Any], list[Any], int, list[str]]:
    """Which files are train and val (the split stage decides: split/training.py), then read and encode each:
    (train, val, rows read, notes). Rows with error findings, template errors or an answer cut by
    max_seq_len are dropped (and counted); `tunesmith data check` says which and why."""
    from tunesmith.split.training import training_files

    (train_path, val_path, fmt), notes = training_files(config)
    train_set, train_rows, train_notes = _encode_file(config, tokenizer, train_path, fmt)
    val_set, val_rows, val_notes = _encode_file(config, tokenizer, val_path, fmt)
    notes += train_notes + val_notes
    if not train_set or not val_set:
        empty = train_path if not train_set else val_path
        raise ConfigError(
            f"{empty}: no usable examples; training needs at least one to train on and one to validate on "
            "(see `tunesmith data check`)"
        )
    return train_set, val_set, train_rows + val_rows, notes


def _encode_file(config: Config, tokenizer: Any, path: Path, fmt: str) -> tuple[list[Any], int, list[str]]:
    """(examples, rows read, notes) of one file: `data.prepare` drops rows with error findings,
    template errors, an answer cut by max_seq_len or nothing to train (and counts them): the very
    rows `tunesmith data check` marks as errors, and says why."""
    from tunesmith.data.prepare import prepare

    prepared = prepare(config.data.model_copy(update={"format": fmt}), tokenizer, path)
    return prepared.examples, prepared.rows_read, prepared.notes()


def _trained(example: Any) -> int:
    # Position 0 is never a target (loss.py shifts by one), so count labels[1:] exactly as the loss does.
    return sum(1 for t in example.labels[1:] if t != IGNORE_INDEX)


def _stop_token_ids(session: _Session) -> list[int]:
    """The tokens that end answers in the training data (the template's end-of-turn, or the EOS
    tunesmith appends): LoRA trains their embedding rows too (LoraConfig.train_stop_tokens)."""
    ids = {t for ex in session.train_set for t in ex.terminators if t is not None}
    if any(ex.eos_appended for ex in session.train_set):
        ids.add(session.tokenizer.eos_token_id)
    return sorted(ids)


def _prepare(session: _Session, resume_from: Path | None, lr_scale: float | None) -> _Attempt:
    """Model (+ checkpoint weights), optimizer, schedule and layout, ready for step state.step + 1."""
    from tunesmith.models.adapters import prepare_model

    config, accelerator, cfg = session.config, session.accelerator, session.config.train
    model = prepare_model(config, stop_token_ids=_stop_token_ids(session))
    loaded = ckpt.load_checkpoint(resume_from, rank=accelerator.process_index) if resume_from else None
    if loaded:
        ckpt.apply_weights(model, loaded.weights)  # before prepare(): sharding backends then shard the right weights
    state = loaded.state if loaded else TrainState()
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates each tensor in one pass: on CPU 5.8x faster than the default
    # multi-tensor path for 105M parameters (96 vs 553 ms per step), without its full-size temporaries.
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate * state.lr_scale, weight_decay=cfg.weight_decay, fused=fused
    )
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed wants its micro-batch before prepare()
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
            session.batching.micro_batch
        )
    loss_model, optimizer = accelerator.prepare(_LossModel(model, bf16=session.precision == "bf16"), optimizer)

    world = accelerator.num_processes
    if not loaded:  # a resume keeps the checkpoint's layout: the data position refers to its plan
        start = session.batching.micro_batch
        accum = max(1, math.ceil(cfg.effective_batch / (start * world)))
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            # No probe: DeepSpeed fixed its micro-batch above, steps inside every synchronising
            # backward and keeps gradients in its own buffers, so a probe's backward would train
            # (step-1 loss 5.642 instead of 5.722 with ZeRO-2 on 2 CPU ranks).
            state.micro_batch, state.accumulation = start, accum
        else:
            probe = lambda size: _probe(loss_model, accelerator, session.train_set, session.padding, size)  # noqa: E731
            state.micro_batch, state.accumulation, oom = fit_micro_batch(probe, start, accum)
            session.notes.extend(oom)
    n_micro = len(_plan(session, state.micro_batch, epoch=0))
    per_epoch = math.ceil(n_micro / (state.accumulation * world))
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    layout = _Layout(
        state.micro_batch, state.accumulation, world, per_epoch, total, max(1, round(cfg.eval_every * per_epoch))
    )

    # Built before the optimizer state loads: building sets the step-0 LR, loading puts back the saved one.
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    if loaded:
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        ckpt.set_rng_state(loaded.rng)
        session.console.print(f"resuming from {resume_from} (step {state.step}, epoch {state.epoch + 1})")
    if lr_scale is not None and lr_scale != state.lr_scale:
        _scale_lr(optimizer, scheduler, lr_scale / state.lr_scale)
        state.lr_scale = lr_scale
    if accelerator.is_main_process:  # a resume drops the rows a killed run logged after its checkpoint
        write_jsonl(config.run_dir / METRICS_FILE, state.metrics)
    return _Attempt(model, loss_model, optimizer, scheduler, state, layout)


def _plan(session: _Session, micro_batch: int, epoch: int) -> list[list[int]]:
    # The same on every rank and every resume: (lengths, sizes, seed, epoch) fix it.
    lengths = [len(e.input_ids) for e in session.train_set]
    cfg = session.config.train
    max_tokens = session.batching.max_tokens_per_batch if session.batching else cfg.max_tokens_per_batch
    return plan_batches(lengths, micro_batch=micro_batch, max_tokens=max_tokens, seed=cfg.seed, epoch=epoch)


def _scale_lr(optimizer, scheduler, factor: float) -> None:
    # Cosine-with-warmup is base_lr × f(step): scaling base and current LR scales the whole schedule.
    # The scheduler's get_last_lr() stays stale until its next step: nothing reads it (the recipe
    # logs the optimizer's LR), so no private attribute is written here.
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor


def _probe(loss_model, accelerator, examples, padding: Padding, size: int) -> None:
    """One forward/backward on the `size` longest examples: the largest micro-batch training will see."""
    longest = sorted(examples, key=lambda e: -len(e.input_ids))[:size]
    # Under FSDP2 an unsynchronised backward leaves its unsharded gradient inside FSDP (not in
    # p.grad), and it joined step 1's gradient: grad norm 1.67x the 1-process run on 2 CPU ranks
    # (tests/train/test_fsdp.py). A synchronised one lands in p.grad, which is cleared below.
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    with contextlib.nullcontext() if fsdp else accelerator.no_sync(loss_model):
        loss, _ = loss_model(
            _batch(longest, padding, accelerator), normalizer=max(1, sum(_trained(e) for e in longest))
        )
        accelerator.backward(loss)
    for p in loss_model.parameters():
        p.grad = None


def _print_plan(session: _Session, run: _Attempt) -> None:
    """The derived quantities, before step 1 (DESIGN.md, convention 4)."""
    from tunesmith.models.adapters import trainable_parameters
    from tunesmith.plan.report import memory_line
    from tunesmith.plan.training import save_plan, training_plan

    config, layout, data = session.config, run.layout, session.train_set
    trainable, total = trainable_parameters(run.model)
    tokens, trained = sum(len(e.input_ids) for e in data), sum(_trained(e) for e in data)
    plan = training_plan(
        config,
        lengths=[len(e.input_ids) for e in data],
        trained_fraction=trained / max(tokens, 1),
        micro_batch=layout.micro_batch,
        accumulation=layout.accumulation,
        precision=session.precision,
        weight_dtype=_dtype_name(run.model) if config.train.method != "qlora" else None,
        world=layout.world,
        sharded=session.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP),
        stop_rows=len(_stop_token_ids(session)),
        batching=session.batching,
    )
    if session.accelerator.is_main_process:
        save_plan(plan, config.run_dir, session.batching)
    table = Table(title=f"train: {config.name} ({config.train.method})", show_header=False, title_justify="left")
    for key, value in [
        ("examples", f"{len(data):,} train, {len(session.val_set):,} validation"),
        ("tokens per epoch", f"{tokens:,} ({trained:,} trained = {trained / max(tokens, 1):.0%})"),
        (
            "effective batch",
            f"{layout.micro_batch} micro-batch × {layout.accumulation} accumulation × "
            f"{layout.world} process(es) = {layout.micro_batch * layout.per_step} examples",
        ),
        (
            "steps",
            f"{layout.steps_per_epoch:,} per epoch, {layout.total_steps:,} in all ({config.train.epochs:g} epochs)",
        ),
        ("validation", f"every {layout.eval_interval} steps, with a checkpoint"),
        (
            "learning rate",
            f"{config.train.learning_rate * run.state.lr_scale:g}, cosine, warmup {config.train.warmup_ratio:.0%}",
        ),
        ("trainable parameters", f"{trainable:,} of {total:,} ({trainable / max(total, 1):.2%})"),
        ("precision", f"{_weights_name(run.model, config.train.method)}, {session.precision} compute"),
        ("planned memory", memory_line(plan)),
        ("licence", f"{plan.license.cls} ({plan.license.source}): {plan.license.why}"),
        ("model kind", f"{plan.kind.kind} ({'; '.join(plan.kind.evidence)})"),
        *[("note", n) for n in session.notes],
    ]:
        table.add_row(key, value)
    session.console.print(table)


def _dtype_name(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _weights_name(model: torch.nn.Module, method: str) -> str:
    """How the weights are stored: QLoRA's base is NF4 (4-bit), whatever dtype its first parameter reports."""
    if method == "qlora":
        trainable = next((p.dtype for p in model.parameters() if p.requires_grad), None)
        adapters = f", {str(trainable).removeprefix('torch.')} adapters" if trainable is not None else ""
        return f"NF4 (4-bit) base weights{adapters}"
    return f"{_dtype_name(model)} weights"


def _start_trackers(accelerator: Accelerator, config: Config, step: int) -> None:
    if "tensorboard" in config.train.report_to:
        # purge_step drops TensorBoard events a killed run wrote after its last checkpoint.
        purge = {"purge_step": step + 1} if step else {}
        accelerator.log_with.append(TensorBoardTracker(TENSORBOARD_DIR, str(config.run_dir), **purge))
    if not accelerator.log_with:
        return
    remote = set(config.train.report_to) - {"tensorboard"}  # TensorBoard would write a folder per hparams call
    hparams = {
        "method": config.train.method,
        "lr": config.train.learning_rate,
        "epochs": config.train.epochs,
        "effective_batch": config.train.effective_batch,
        "lora_r": config.lora.r,
        "seed": config.train.seed,
    }
    accelerator.init_trackers(
        "tunesmith",
        config=hparams if remote else None,
        init_kwargs={"wandb": {"name": config.name}, "mlflow": {"run_name": config.name}},
    )
    missing = set(config.train.report_to) - {t.name for t in accelerator.trackers}
    if missing and accelerator.is_main_process:
        print(f"report_to: {sorted(missing)} not installed; metrics.jsonl and the other trackers still get every row")


# ============================================================================ train


def _fit(session: _Session, run: _Attempt) -> str:
    """The loop, from state.step to layout.total_steps. Returns why it stopped; raises _NonFinite."""
    cfg, state, layout, data = session.config.train, run.state, run.layout, session.train_set
    guard = GuardState.from_json(state.guard) if state.guard else GuardState()
    if cfg.early_stopping_patience and guard.rising >= cfg.early_stopping_patience:
        return OVERFITTING  # the checkpoint resumed from had already stopped
    plan = lru_cache(maxsize=2)(lambda epoch: _plan(session, layout.micro_batch, epoch))
    run.loss_model.train()
    stop = StopRequest()
    with _progress(session.console, layout.total_steps, state.step) as (progress, task), stop.installed():
        while state.step < layout.total_steps:
            batches = plan(state.epoch)
            window = [
                [data[i] for i in b] for b in batches[state.batch_in_epoch : state.batch_in_epoch + layout.per_step]
            ]
            tic = time.perf_counter()
            loss, grad_norm = _accumulate(run.loss_model, session.accelerator, window, session.padding, cfg.grad_clip)
            cause = non_finite(loss, grad_norm)
            if cause:  # checked before the update, so the weights in memory are still the good ones
                raise _NonFinite(state.step + 1, cause)
            lr = _lr(run.optimizer)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.batch_in_epoch += len(window)
            state.trained_tokens += sum(_trained(e) for b in window for e in b)
            epoch = round(state.epoch + state.batch_in_epoch / len(batches), 4)
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            speed = sum(len(e.input_ids) for b in window for e in b) / max(time.perf_counter() - tic, 1e-9)
            _log(
                session,
                state,
                {
                    "step": state.step,
                    "epoch": epoch,
                    "loss": loss,
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "tokens_per_s": round(speed, 1),
                    "trained_tokens": state.trained_tokens,
                },
            )
            progress.update(task, advance=1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", speed=f"{speed:,.0f}")

            evaluate = state.step % layout.eval_interval == 0 or state.step == layout.total_steps
            if evaluate:
                # ============================================================ validate
                val_loss = _evaluate(
                    run.loss_model, session.accelerator, session.val_set, session.padding, layout.micro_batch
                )
                if not math.isfinite(val_loss):
                    raise _NonFinite(state.step, "validation loss")
                last_eval = max([m["step"] for m in state.metrics if "val_loss" in m], default=0)
                since = [m["loss"] for m in state.metrics if "loss" in m and m["step"] > last_eval]
                verdict = observe_eval(
                    guard,
                    step=state.step,
                    val_loss=val_loss,
                    train_loss=sum(since) / len(since),
                    patience=cfg.early_stopping_patience,
                )
                state.guard = guard.to_json()
                _log(
                    session, state, {"step": state.step, "epoch": epoch, "val_loss": val_loss, "best": verdict.is_best}
                )
                _save(session, run)
                progress.update(task, val=f"{val_loss:.4f}")
                if verdict.stop:
                    session.console.print(
                        f"[yellow]overfitting: validation loss rose {guard.rising} evaluations in a "
                        f"row while training loss fell; stopping at step {state.step}[/]"
                    )
                    return OVERFITTING
            if _agreed(session.accelerator, stop.requested) and state.step < layout.total_steps:
                if not evaluate:  # an evaluation step has just saved
                    _save(session, run)
                return INTERRUPTED
    return COMPLETED


def _agreed(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when any rank's flag is: all ranks must stop at the same step (their
    forwards are collectives). One tiny all-reduce per step, and only with several processes."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item())


def _batch(examples: list[Any], padding: Padding, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    batch = collate(examples, padding.pad_id, pad_to_multiple_of=padding.multiple)
    return {k: v.to(accelerator.device) for k, v in batch.items()}


def _shard(batches: list[Any], rank: int, world: int) -> list[tuple[Any, float]]:
    """This rank's share: every world-th batch, padded with weight-0 repeats so every rank runs the
    same number of forwards (DDP/FSDP forwards are collectives; an uneven count would hang)."""
    mine = [(b, 1.0) for b in batches[rank::world]]
    return mine + [(batches[0], 0.0)] * (math.ceil(len(batches) / world) - len(mine))


def _accumulate(
    loss_model, accelerator, window: list[list[Any]], padding: Padding, grad_clip: float
) -> tuple[float, float]:
    """Forward/backward over one accumulation window; returns (loss per trained token, grad norm).

    The normaliser is the trained-token count of the whole window on all ranks, known to every
    rank from the shared plan. DDP averages gradients over ranks, so each rank's loss is scaled by
    the world size to give the gradient of the sum.
    """
    normalizer = sum(_trained(e) for batch in window for e in batch)
    world = accelerator.num_processes
    mine = _shard(window, accelerator.process_index, world)
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for j, (examples, weight) in enumerate(mine):
        last = j == len(mine) - 1
        accelerator.sync_gradients = last  # DeepSpeed steps on the synchronising backward only
        with contextlib.nullcontext() if last else accelerator.no_sync(loss_model):
            loss, _ = loss_model(_batch(examples, padding, accelerator), normalizer=normalizer)
            accelerator.backward(loss * (world * weight))
        total += loss.detach().double() * weight
    grad_norm = accelerator.clip_grad_norm_(loss_model.parameters(), grad_clip)
    total = accelerator.reduce(total, reduction="sum")
    return float(total), float(grad_norm) if grad_norm is not None else math.nan


@torch.no_grad()
def _evaluate(loss_model, accelerator, val_set, padding: Padding, micro_batch: int) -> float:
    """Mean loss per trained token over the whole validation set (all ranks)."""
    batches = plan_batches([len(e.input_ids) for e in val_set], micro_batch=micro_batch, seed=0, epoch=0)
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    loss_model.eval()
    for ids, weight in _shard(batches, accelerator.process_index, accelerator.num_processes):
        loss, n = loss_model(_batch([val_set[i] for i in ids], padding, accelerator), normalizer=1)
        sums += torch.stack([loss.double() * weight, torch.tensor(n * weight, dtype=torch.float64, device=sums.device)])
    loss_model.train()
    sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1])


def _log(session: _Session, state: TrainState, row: dict[str, Any]) -> None:
    """One metrics row: kept in the state (checkpointed), appended to metrics.jsonl, sent to trackers."""
    state.metrics.append(row)
    accelerator = session.accelerator
    if not accelerator.is_main_process:
        return
    # NaN is not JSON: a non-finite value is written as a string, so every line stays parseable.
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}
    with open(session.config.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean) + "\n")
        f.flush()
    if accelerator.trackers:
        scalars = {
            k: v for k, v in clean.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        accelerator.log(
            {("val/" if k == "val_loss" else "train/") + k: v for k, v in scalars.items()}, step=row["step"]
        )


def _lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@contextlib.contextmanager
def _progress(console: Console, total: int, done: int):
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]} · val {task.fields[val]} · lr {task.fields[lr]} · {task.fields[speed]} tok/s"
        ),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=console.quiet) as progress:
        yield progress, progress.add_task("train", total=total, completed=done, loss="-", val="-", lr="-", speed="-")


# ============================================================================ save


def _save(session: _Session, run: _Attempt) -> None:
    ckpt.save_checkpoint(
        session.config.run_dir,
        run.state,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        accelerator=session.accelerator,
        wrapped=run.loss_model,
        keep=session.config.train.keep_checkpoints,
    )


def _base_loader(config: Config):
    """A fresh, unquantised base to merge into (never the 4-bit training copy: QLoRA would round the adapter away)."""
    from tunesmith.models.load import load_model

    m = config.model
    return lambda: load_model(m.name_or_path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)


def _export_model(session: _Session, run: _Attempt) -> Any:
    """The model the best checkpoint is loaded into for export. Under FSDP (and ZeRO-3) the training
    copy holds only this rank's shards (DTensors), which full checkpoint weights cannot be copied
    into: the main process builds a fresh unsharded one (found by running FSDP on 2 CPU ranks)."""
    if session.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return run.model
    from tunesmith.models.adapters import prepare_model

    return prepare_model(session.config, stop_token_ids=_stop_token_ids(session))


def _finish(session: _Session, run: _Attempt, reason: str, merge: bool) -> TrainResult:
    """Export the best checkpoint to final/, draw the curves, print and write the summary."""
    config, accelerator, state = session.config, session.accelerator, run.state
    run_dir = config.run_dir
    guard = GuardState.from_json(state.guard) if state.guard else GuardState()
    best = ckpt.step_path(run_dir, guard.best_step) if guard.best_step else None
    # Interrupted: exit soon; the resumed run exports final/ when it ends.
    exported = reason != INTERRUPTED and best is not None and ckpt.is_complete(best)
    final = run_dir / FINAL_DIR if exported else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final is not None:
            merge_base = _base_loader(config) if merge else None
            ckpt.export_final(best, _export_model(session, run), session.tokenizer, final, merge_base=merge_base)
        plot_loss(state.metrics, run_dir / PLOTS_DIR / LOSS_PLOT, best_step=guard.best_step)
        why = {
            COMPLETED: "completed all planned steps",
            OVERFITTING: "early stop: overfitting (validation loss rising while training loss falls)",
            NON_FINITE: "stopped: loss or gradient became NaN/inf (the error says at which step and what to try)",
            INTERRUPTED: f"interrupted at step {state.step} (SIGINT/SIGTERM), checkpoint saved; --resume continues",
        }[reason]
        summary = {
            "best_step": guard.best_step,
            "best_val_loss": guard.best_val_loss,
            "stop_reason": reason,
            "why": why,
            "steps": state.step,
            "final_dir": str(final) if final else None,
            "minutes": round((time.time() - session.started) / 60, 2),
            "notes": session.notes,
        }
        write_json(run_dir / SUMMARY_FILE, summary)
        best_line = f"{guard.best_step}  (validation loss {guard.best_val_loss:.4f})" if guard.best_step else "none"
        session.console.print(
            Panel(
                f"best step      {best_line}\nstopped        {why}\nsteps          {state.step}\n"
                f"model          {final or '(none exported)'}\ncurves         {run_dir / PLOTS_DIR / LOSS_PLOT}\n"
                f"metrics        {run_dir / METRICS_FILE}",
                title=f"train: {config.name}",
                expand=False,
            )
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        run_dir,
        final,
        guard.best_step,
        guard.best_val_loss,
        reason,
        state.step,
        state.micro_batch,
        state.accumulation,
        session.notes,
    )
