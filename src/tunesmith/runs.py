"""The run directory and the one way tunesmith writes files: atomically.

Every output goes to a temporary file in the same directory, is fsynced, then renamed over the
target, so a crash never leaves a half-written file where a later command would read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# On-disk names inside a run directory: one place, imported everywhere (DESIGN.md, convention 7).
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
PLOTS_DIR = "plots"
COMPLETE_MARKER = "COMPLETE"  # written last into a checkpoint directory; without it, ignored
SUMMARY_FILE = "train_summary.json"
TENSORBOARD_DIR = "tensorboard"
LOSS_PLOT = "loss.png"  # in PLOTS_DIR
LENGTHS_PLOT_FILE = "token_lengths.png"  # written by `data check` beside its report
# Stages after training; each writes only under its own name (the "why" of each file is in its module).
SPLIT_DIR = "split"  # in DATA_DIR: train.jsonl, val.jsonl, test.jsonl, split_report.json
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
SPLIT_REPORT_FILE = "split_report.json"
PLAN_FILE = "plan.json"
EVAL_DIR = "eval"  # tuned.jsonl, base.jsonl, summary.json (see tunesmith.evaluate)
EVAL_SUMMARY_FILE = "summary.json"
COMPARE_DIR = "compare"
REPORT_FILE = "report.html"
# Written by `tunesmith model import` into the model directory: the GGUF source and its quantisation.
IMPORT_INFO_FILE = "tunesmith_import.json"

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should read like any other
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON object per line; returns the number of rows written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n
