"""Guard rails of the training loop, as pure functions the recipe calls and tests script.

- `observe_eval`: after each validation, is this the best checkpoint, and is the run overfitting
  (validation loss rising for `patience` evaluations in a row while training loss falls)?
- `non_finite`: is this step's loss or gradient norm NaN/inf? Nothing is skipped silently: the
  recipe stops (or retries from the last good checkpoint) and `TrainingStopped` says why.
- `StopRequest`: SIGINT/SIGTERM ask the loop to stop after the step in progress, which is then
  checkpointed (`TrainingInterrupted`); a second signal exits at once.
- `fit_micro_batch`: out of memory before step 1 halves the micro-batch and doubles accumulation,
  so the effective batch (and the training it describes) stays the same.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

OVERFITTING = "overfitting"
COMPLETED = "completed"
NON_FINITE = "non-finite"
INTERRUPTED = "interrupted"


@dataclass
class GuardState:
    best_val_loss: float | None = None
    best_step: int | None = None
    rising: int = 0  # evaluations in a row with val loss up while train loss went down
    last_val_loss: float | None = None
    last_train_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuardState:
        return cls(**data)


@dataclass(frozen=True)
class EvalVerdict:
    is_best: bool
    stop: bool
    reason: str | None = None  # OVERFITTING when stop is True


def observe_eval(state: GuardState, *, step: int, val_loss: float, train_loss: float, patience: int) -> EvalVerdict:
    """Record one evaluation in `state` (mutated) and say what to do.

    `train_loss` is the mean training loss since the previous evaluation. Rising validation loss
    alone is noise or a bad batch; rising while training loss falls is the model memorising.
    `patience` 0 never stops.
    """
    is_best = state.best_val_loss is None or val_loss < state.best_val_loss
    if is_best:
        state.best_val_loss, state.best_step = val_loss, step
    diverging = (
        state.last_val_loss is not None
        and state.last_train_loss is not None
        and val_loss > state.last_val_loss
        and train_loss < state.last_train_loss
    )
    state.rising = state.rising + 1 if diverging else 0
    state.last_val_loss, state.last_train_loss = val_loss, train_loss
    if patience > 0 and state.rising >= patience:
        return EvalVerdict(is_best=is_best, stop=True, reason=OVERFITTING)
    return EvalVerdict(is_best=is_best, stop=False)


def non_finite(loss: float, grad_norm: float | None) -> str | None:
    """The cause ("loss" or "grad norm") when this step cannot be trusted, else None."""
    if not math.isfinite(loss):
        return "loss"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return "grad norm"
    return None


def nan_advice(*, lr: float, dtype: torch.dtype | None, grad_clip: float) -> list[str]:
    """What usually fixes a NaN, most likely first, with the values in force."""
    advice = [f"lower the learning rate (now {lr:g}; try train.lr={lr / 2:g}) or raise train.warmup_ratio"]
    if dtype == torch.float16:
        advice.append("use bfloat16 instead of float16 (model.dtype=bfloat16): fp16 overflows above 65504")
    advice.append(f"clip gradients harder (now train.grad_clip={grad_clip:g}; try {grad_clip / 2:g})")
    advice.append("or let tunesmith retry from the last good checkpoint at half the LR: train.on_nan=retry")
    return advice


class TrainingStopped(Exception):
    """A guard rail stopped training; the message says at which step, why, and what to try.

    The CLI exits with code 1 (README: exit codes).
    """

    def __init__(self, *, step: int, cause: str, advice: list[str], last_good: Path | None):
        self.step, self.cause, self.advice, self.last_good = step, cause, advice, last_good
        where = f"last good checkpoint kept intact: {last_good}" if last_good else "no checkpoint was written before it"
        tips = "".join(f"\n  - {a}" for a in advice)
        super().__init__(f"{cause} became NaN/inf at step {step}; {where}. To fix:{tips}")


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a step, which was checkpointed. The CLI exits 130."""

    def __init__(self, *, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"interrupted at step {step}; {saved}; `--resume` continues")


class StopRequest:
    """The first SIGINT (Ctrl-C) or SIGTERM sets `requested`: the loop finishes its step, saves a
    checkpoint and stops. The handlers then go back to what they were, so a second signal acts at
    once (Ctrl-C raises KeyboardInterrupt, SIGTERM kills): a stuck save can always be cut short,
    and the checkpoint protocol makes that safe."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self._restore()
        name = signal.Signals(signum).name
        print(
            f"\n{name}: finishing this step, then saving a checkpoint (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            self._restore()


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    # CPU allocations fail with a RuntimeError from the default allocator.
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def fit_micro_batch(
    probe: Callable[[int], None], size: int, accumulation: int, *, knob: str = "micro_batch"
) -> tuple[int, int, list[str]]:
    """Find a batch size that fits, keeping size × accumulation (the effective batch) constant.

    `probe(size)` runs the most memory-hungry forward/backward at that size and raises on
    out-of-memory. `knob` names the size in the notes (`micro_batch`, or `max_tokens_per_batch`
    when batches are capped by tokens). Returns (size, accumulation, notes for the user).
    """
    notes = []
    while True:
        try:
            probe(size)
            return size, accumulation, notes
        except Exception as e:
            if not is_out_of_memory(e) or size == 1:
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        smaller = size // 2
        more = math.ceil(size * accumulation / smaller)  # an odd size rounds the effective batch up, never down
        notes.append(
            f"out of memory at {knob}={size}: now {knob}={smaller}, accumulation={more} "
            f"(effective batch {size * accumulation} -> {smaller * more})"
        )
        size, accumulation = smaller, more
