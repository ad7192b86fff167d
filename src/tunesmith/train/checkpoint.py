"""Crash-safe checkpoints: a checkpoint either exists completely or is never loaded.

Protocol: every file goes into `checkpoints/.tmp-step-N/` and is fsynced; the completion marker
(`runs.COMPLETE_MARKER`) is written last; the directory is renamed to `checkpoints/step-N/` and
the parent fsynced. A kill at any moment leaves either a staging directory (deleted on the next
save) or a complete checkpoint. A `step-N/` without the marker (copied by hand, half-deleted) is
ignored like a staging directory.

Contents, and why each is there (resume must equal an uninterrupted run bit for bit):
- `trainable.safetensors`: the parameters that train (LoRA adapters only, or every weight for full
  fine-tuning); the frozen base is reloaded from the model directory.
- `optimizer.pt` (or `optimizer.rank{R}.pt` when the optimizer is sharded across ranks, as under
  DeepSpeed ZeRO / FSDP), `scheduler.pt`: AdamW moments and the LR schedule position.
- `rng.rank{R}.pt`: Python, NumPy, torch (and CUDA) generator states of each rank, as tensors.
- `state.json`: step, data position, effective batch layout, guard state, metrics so far.
- `checksums.json`: size and sha256 of every file above, written just before the marker. A
  checkpoint a disk error, a full disk or a stray `cp` damaged after the fact fails `verify` and
  resume falls back to the newest intact one (`latest_intact`), renaming the bad one aside.
`export_final` turns the best one into the run's result: `final/`, loadable by transformers/peft.
Everything `.pt` is loaded with `torch.load(weights_only=True)`: tensors and plain types only, so
a checkpoint can never run code (no pickle).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.runs import CHECKPOINTS_DIR, COMPLETE_MARKER

CHECKPOINT_PREFIX = "step-"
STAGING_PREFIX = ".tmp-step-"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
OPTIMIZER_RANK_FILE = "optimizer.rank{rank}.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.rank{rank}.pt"
STATE_FILE = "state.json"
CHECKSUMS_FILE = "checksums.json"
CORRUPT_SUFFIX = ".corrupt"  # a checkpoint that failed verification is renamed step-N.corrupt
MERGED_DIR = "merged"  # inside final/: adapter merged into the base, with --merge
_STEP_DIR = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, ...); earlier checkpoints are intact."""


@dataclass
class TrainState:
    """Where training stands: everything besides tensors that a resume needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # micro-batches of that epoch already consumed, all ranks together
    trained_tokens: int = 0  # trained (loss-carrying) tokens seen so far, all ranks
    micro_batch: int = 0  # the layout in force (may differ from the config after an OOM halving)
    accumulation: int = 0
    lr_scale: float = 1.0  # halved by each `on_nan: retry`
    guard: dict[str, Any] = field(default_factory=dict)  # guards.GuardState as JSON
    metrics: list[dict[str, Any]] = field(default_factory=list)  # every metrics.jsonl row so far

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


@dataclass
class Checkpoint:
    """A loaded checkpoint, not yet applied to a model/optimizer (see `apply_weights`)."""

    path: Path
    state: TrainState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: dict[str, Any] | None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_step(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return checkpoint_step(path) is not None and (path / COMPLETE_MARKER).is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_complete(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


# ---- writing ---------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def step_path(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"{CHECKPOINT_PREFIX}{step}"


def staging_path(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"{STAGING_PREFIX}{step}"


def begin(run_dir: str | Path, step: int) -> Path:
    """Create an empty staging directory for step `step` (main process only).

    Staging directories left by a killed save are removed here: they are never loadable anyway.
    """
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = staging_path(run_dir, step)
    staging.mkdir()
    return staging


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_FREE_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


@contextlib.contextmanager
def _writing(staging: Path) -> Iterator[None]:
    """Turn a failed checkpoint write into one sentence. A full disk shows up as ENOSPC from our own
    writes, but as `RuntimeError: ... unexpected pos` when PyTorch's zip writer hits it and as a
    SafetensorError from safetensors: so after any failure, the free space decides. The staging
    directory is removed (it frees the space it took and is never loadable anyway)."""
    try:
        yield
    except Exception as e:
        try:
            free = shutil.disk_usage(staging.parent).free
        except OSError:
            free = None
        full = getattr(e, "errno", None) in _DISK_FULL_ERRNOS or (free is not None and free < _DISK_FULL_FREE_BYTES)
        if not full and not isinstance(e, OSError):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        last = latest_complete(staging.parent.parent)
        kept = (
            f"last complete checkpoint is step {checkpoint_step(last)} ({last})"
            if last
            else "no complete checkpoint yet"
        )
        what = "no space left on device" if full else f"{e.strerror or e}"
        raise CheckpointWriteError(
            f"could not write checkpoint step {staging.name.removeprefix(STAGING_PREFIX)} in {staging.parent}: "
            f"{what}; {kept}. Free some space (or point runs_dir elsewhere), then run again with --resume"
        ) from e


def write_rank_files(staging: Path, rank: int, *, optimizer_state: dict[str, Any] | None = None) -> None:
    """What each rank owns: its RNG streams, and its optimizer shard when the optimizer is sharded."""
    with _writing(staging):
        _write_rank_files(staging, rank, optimizer_state)


def _write_rank_files(staging: Path, rank: int, optimizer_state: dict[str, Any] | None) -> None:
    _torch_save(rng_state(), staging / RNG_FILE.format(rank=rank))
    if optimizer_state is not None:
        _torch_save(optimizer_state, staging / OPTIMIZER_RANK_FILE.format(rank=rank))


def write_main_files(
    staging: Path,
    state: TrainState,
    *,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any],
) -> None:
    """What the main process writes: weights, unsharded optimizer, scheduler, state."""
    with _writing(staging):
        _write_main_files(staging, state, weights, optimizer_state, scheduler_state)


def _write_main_files(
    staging: Path,
    state: TrainState,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any],
) -> None:
    # contiguous + clone: safetensors refuses views and shared storage (tied embeddings).
    save_file({k: v.detach().contiguous().cpu().clone() for k, v in weights.items()}, staging / WEIGHTS_FILE)
    _fsync_path(staging / WEIGHTS_FILE)
    _check_safetensors(staging / WEIGHTS_FILE)
    if optimizer_state is not None:
        _torch_save(optimizer_state, staging / OPTIMIZER_FILE)
    _torch_save(scheduler_state, staging / SCHEDULER_FILE)
    with open(staging / STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _check_safetensors(path: Path) -> None:
    """Raise unless the file is as long as its header says: safetensors can report success on a
    write the disk did not take (it does on /dev/full)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
    if header is None:
        raise OSError(errno.EIO, "unreadable safetensors header", str(path))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size != 8 + n + end:
        raise OSError(errno.EIO, f"{path.stat().st_size} bytes written of {8 + n + end}", str(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksums(staging: Path) -> None:
    # ~0.5 s per GB (sha256 on one core): a 110M-parameter full fine-tune's checkpoint is ~1.3 GB.
    sums = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name not in (COMPLETE_MARKER, CHECKSUMS_FILE)
    }
    with open(staging / CHECKSUMS_FILE, "w", encoding="utf-8") as f:
        json.dump(sums, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify(path: str | Path) -> str | None:
    """What is wrong with a complete checkpoint's files (None: intact). Checkpoints written before
    checksums existed are judged by their files being present and readable."""
    path = Path(path)
    listed = path / CHECKSUMS_FILE
    if not listed.is_file():
        missing = [n for n in (STATE_FILE, WEIGHTS_FILE) if not (path / n).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    try:
        sums = json.loads(listed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{CHECKSUMS_FILE} is unreadable"
    for name, want in sums.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["bytes"]:
            return f"{name} is {file.stat().st_size} bytes, {want['bytes']} were written (truncated or overwritten)"
        if _sha256(file) != want["sha256"]:
            return f"{name} does not match its checksum (overwritten or corrupted on disk)"
    return None


def latest_intact(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whose files verify, and a note per newer one that did not
    (each renamed to `step-N.corrupt`, kept for inspection, out of the way of rotation and resume)."""
    notes = []
    for path in reversed(complete_checkpoints(run_dir)):
        problem = verify(path)
        if problem is None:
            return path, notes
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        notes.append(f"checkpoint {path.name} is damaged ({problem}); moved aside to {aside.name}")
    return None, notes


def commit(staging: Path) -> Path:
    """Write checksums, then the marker last, then rename staging to `step-N` (main process, after every rank wrote)."""
    with _writing(staging):
        _write_checksums(staging)
        with open(staging / COMPLETE_MARKER, "w", encoding="utf-8") as f:
            f.write("complete\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(staging)
    target = staging.parent / f"{CHECKPOINT_PREFIX}{staging.name.removeprefix(STAGING_PREFIX)}"
    if target.exists():  # only an incomplete leftover can be here: complete steps are never redone
        shutil.rmtree(target)
    os.replace(staging, target)
    _fsync_path(staging.parent)
    return target


def save_checkpoint(
    run_dir: str | Path,
    state: TrainState,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any = None,
    wrapped: torch.nn.Module | None = None,
    keep: int | None = None,
) -> Path:
    """The one save path, for training and tests alike. Without `accelerator`: one process. With
    it, every rank calls this together: each writes its RNG (and its optimizer shard under DeepSpeed
    or FSDP, whose `wrapped` module's state dict is gathered to the main process), the main process
    the rest, then the marker and the rename. `keep`: afterwards, delete complete checkpoints beyond
    the `keep` newest, never the best (`state.guard["best_step"]`). Returns the checkpoint path."""
    rank, main, sharded = 0, True, False
    if accelerator is not None:
        from accelerate.utils import DistributedType

        rank, main = accelerator.process_index, accelerator.is_main_process
        sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    if main:
        begin(run_dir, state.step)
    barrier()
    staging = staging_path(run_dir, state.step)
    write_rank_files(staging, rank, optimizer_state=optimizer.state_dict() if sharded else None)
    gathered = None
    if sharded:  # a collective: every rank takes part, the main process gets the full tensors
        full = accelerator.get_state_dict(wrapped)  # None on other ranks under ZeRO-3
        gathered = {k.removeprefix("model."): v for k, v in full.items()} if full is not None else None
    if main:
        write_main_files(
            staging,
            state,
            weights=trainable_weights(model, gathered),
            optimizer_state=None if sharded else optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
        )
    barrier()
    if main:
        commit(staging)
        if keep is not None:
            rotate(run_dir, keep=keep, best_step=state.guard.get("best_step"))
    barrier()
    return step_path(run_dir, state.step)


def trainable_weights(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The parameters that train, by their `state_dict` names.

    `state_dict` may be a gathered one (DeepSpeed ZeRO-3 / FSDP hold shards on each rank).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    source = state_dict if state_dict is not None else model.state_dict()
    return {n: source[n] for n in names}


def rotate(run_dir: str | Path, *, keep: int, best_step: int | None) -> list[Path]:
    """Delete complete checkpoints beyond the `keep` newest, never the best; returns what went."""
    done = complete_checkpoints(run_dir)
    keep_paths = set(done[-keep:]) if keep > 0 else set()
    removed = []
    for path in done:
        if path in keep_paths or checkpoint_step(path) == best_step:
            continue
        # Remove the marker first: a kill during rmtree must leave an ignored directory,
        # not a "complete" one with missing files.
        (path / COMPLETE_MARKER).unlink()
        shutil.rmtree(path)
        removed.append(path)
    return removed


# ---- RNG as tensors and plain types (loadable with weights_only=True) -----------------------


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python_version": version,
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_name": name,
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python_mt"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_name"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- reading -----------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_checkpoint(path: str | Path, *, rank: int = 0) -> Checkpoint:
    """Read a complete checkpoint (and this rank's files). Refuses one without the marker."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {COMPLETE_MARKER} marker); it cannot be loaded")
    state = TrainState.from_json(json.loads((path / STATE_FILE).read_text(encoding="utf-8")))
    optimizer = _torch_load(path / OPTIMIZER_FILE)
    if optimizer is None:
        optimizer = _torch_load(path / OPTIMIZER_RANK_FILE.format(rank=rank))
    return Checkpoint(
        path=path,
        state=state,
        weights=load_file(path / WEIGHTS_FILE),
        optimizer=optimizer,
        scheduler=_torch_load(path / SCHEDULER_FILE),
        # A rank that did not exist when the checkpoint was written starts from rank 0's streams.
        rng=_torch_load(path / RNG_FILE.format(rank=rank)) or _torch_load(path / RNG_FILE.format(rank=0)),
    )


def apply_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into `model`; every saved tensor must land somewhere."""
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint weights do not fit this model: {len(result.unexpected_keys)} unknown names, "
            f"e.g. {result.unexpected_keys[:3]} (was it written for another model or train.method?)"
        )


# ---- the run's result --------------------------------------------------------------------------


def export_final(
    best: Path, model: torch.nn.Module, tokenizer: Any, final: Path, *, merge_base: Callable[[], Any] | None = None
) -> Path:
    """Best checkpoint → `final`: the adapter (LoRA/QLoRA) or the full model (safetensors), with the
    tokenizer and a generation config that stops at the tokenizer's EOS. With `merge_base` (returns
    a fresh unquantised base model), also the merged full model in `final/merged`. Built aside and
    swapped in, so `final` is never half-written. `model` gets the best weights (training is over)."""
    from peft import PeftModel

    if not is_complete(best):
        raise FileNotFoundError(f"{best}: not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    # The weights only: a sharded optimizer's files (DeepSpeed's hold its loss-scaler object) are
    # not needed here, and are not loadable with weights_only=True.
    apply_weights(model, load_file(best / WEIGHTS_FILE))
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    generation = (model.get_base_model() if isinstance(model, PeftModel) else model).generation_config
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    generation.eos_token_id = sorted({e for e in [*eos, tokenizer.eos_token_id] if e is not None}) or None
    generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(staging)
    if merge_base is not None and isinstance(model, PeftModel):
        with warnings.catch_warnings():  # see models/adapters.py: peft reads a deprecated property
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")
            merged = PeftModel.from_pretrained(merge_base(), staging).merge_and_unload()
        merged.save_pretrained(staging / MERGED_DIR, safe_serialization=True)
        tokenizer.save_pretrained(staging / MERGED_DIR)
        generation.save_pretrained(staging / MERGED_DIR)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
