"""The run directory and the one way tunesmith writes files: atomically.

Every output goes to a temporary file in the same directory, is fsynced, then renamed over the
target, so a crash never leaves a half-written file where a later command would read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

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
SPLIT_REJECTS_FILE = "rejects.jsonl"  # in the split directory: rows `--dedup` (or unreadable input) left out
SPLIT_PLOT_FILE = "split_similarity.png"  # in the split directory: nearest-train-row similarity histogram
LEAKAGE_REPORT_FILE = "leakage_report.json"  # in the split directory: `train` with a user's data.val_path
SPLIT_EMBED_CACHE = "embeddings-{tag}.npz"  # in the split directory: vectors by content hash, per embedder
PLAN_FILE = "plan.json"
EVAL_DIR = "eval"  # tuned.jsonl, base.jsonl, summary.json (see tunesmith.evaluate)
EVAL_SUMMARY_FILE = "summary.json"
EVAL_REGRESSION_FILE = "regression.json"  # in EVAL_DIR: regression_check's result (tunesmith.evaluate.regression)
COMPARE_DIR = "compare"
# In COMPARE_DIR (see tunesmith.compare): the blind sheet, its key apart from it, one votes file per reviewer.
SHEET_FILE = "sheet.jsonl"
SHEET_CSV_FILE = "sheet.csv"
SHEET_XLSX_FILE = "sheet.xlsx"
KEY_FILE = "key.json"  # which side is which; never served by `tunesmith review`
VOTES_DIR = "votes"
UNBLIND_FILE = "results.json"
DATA_REPORT_FILE = "report.json"  # in DATA_DIR, written by `data check` in the demo/pipeline
REPORT_FILE = "report.html"
LOCK_FILE = ".lock"  # held (flock) by the process writing the run directory; says who it is
# Written by `tunesmith model import` into the model directory: the GGUF source and its quantisation.
IMPORT_INFO_FILE = "tunesmith_import.json"
PIPELINE_FILE = "pipeline.json"  # `tunesmith run`'s stage ledger: what ran, on which inputs, how it ended
SUPERSEDED_DIR = "superseded"  # `tunesmith run` moves a retrained run's old training outputs here

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


def write_png(path: str | Path, figure: Any) -> Path:
    """A matplotlib figure as a PNG, laid out tight and written atomically (the caller closes it)."""
    figure.tight_layout()
    with atomic_open(path, "wb", encoding=None) as f:
        figure.savefig(f, format="png")
    return Path(path)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON object per line; returns the number of rows written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


# --- the manifest: what produced a run directory -------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_sha() -> str | None:
    """The commit of tunesmith's own checkout (editable installs), not of the caller's cwd; None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def build_manifest(
    stage: str, *, data_path: str | Path, rows: int, resumed_from: str | Path | None = None, **hardware: Any
) -> dict[str, Any]:
    """Versions, data fingerprint, git sha and hardware of a stage's run (MANIFEST_FILE).
    `hardware` adds keys to the hardware section (e.g. mixed_precision)."""
    import platform
    import sys

    import accelerate
    import peft
    import torch
    import transformers

    from tunesmith import allocator

    return {
        "stage": stage,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
        "data": {"path": str(data_path), "sha256": sha256_file(data_path), "rows": rows},
        "git_sha": git_sha(),
        "hardware": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "processes": int(os.environ.get("WORLD_SIZE", "1")),
            "allocator": allocator.running(),
            **hardware,
        },
    }


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys ({"train": {"lr": 1}} -> {"train.lr": 1}), for
    diffs of configs, ledgers and results."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def changed_keys(old_yaml: str, new_yaml: str) -> list[str]:
    """`section.key` names whose values differ between two saved configs (CONFIG_FILE texts);
    top-level scalars by their own name. For the warning a resume with a changed config prints."""
    old, new = yaml.safe_load(old_yaml) or {}, yaml.safe_load(new_yaml) or {}
    changed = []
    for key in new.keys() | old.keys():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in b.keys() | a.keys() if a.get(k) != b.get(k)]
        elif a != b:
            changed.append(key)
    return sorted(changed)


class RunError(Exception):
    """An output or run-directory problem the user fixes by changing a path or waiting (exit 2)."""


def _identity(path: Path) -> tuple[str, ...]:
    """What makes two spellings the same file: the inode for an existing file (hard links, symlinks),
    else the absolute path with symlinks and `..` resolved."""
    try:
        st = path.stat()
        return ("inode", str(st.st_dev), str(st.st_ino))
    except OSError:
        return ("path", str(path.resolve()))


def check_outputs(inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None]) -> None:
    """Refuse before writing anything when an output is also an input, or two outputs are one file,
    however the paths are spelled (relative, `..`, symlinks, hard links). Keys name the options in
    the message (e.g. {"input": IN}, {"--output": X, "--rejects": Y}); None values are skipped.
    Raises RunError naming every collision (writing would destroy the input or one output), or an
    output that cannot be created (its folder is a file, or not writable), before anything is read."""
    seen: dict[tuple[str, ...], tuple[str, Path]] = {}
    for name, value in inputs.items():
        if value is not None:
            seen.setdefault(_identity(Path(value)), (name, Path(value)))
    clashes = []
    for name, value in outputs.items():
        if value is None:
            continue
        key = _identity(Path(value))
        if key in seen:
            other, other_path = seen[key]
            what = "would overwrite" if other in inputs else "is the same file as"
            clashes.append(f"{name} {value} {what} {other} {other_path}")
        else:
            seen[key] = (name, Path(value))
            _check_creatable(name, Path(value))
    if clashes:
        raise RunError("; ".join(clashes) + ": give each output its own path, different from every input")


def _check_creatable(name: str, path: Path) -> None:
    """Fail now, not after minutes of work, when `path` cannot be written."""
    if path.is_dir():
        raise RunError(f"{name} {path} is a directory; give a file path")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{name} {path}: {ancestor} is a file, not a directory; fix the path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{name} {path}: cannot write into {ancestor} (permission denied); write somewhere else")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_HELD: set[str] = set()  # run directories whose lock this process holds (resolved paths)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, stage: str = "train") -> Iterator[Path]:
    """Hold an exclusive lock on a run directory while a stage writes into it.

    Two processes writing one run would interleave metrics.jsonl and overwrite each other's
    checkpoints. The lock is `flock` on `run_dir/.lock`, which the kernel releases when its holder
    dies (kill -9 included), so a stale lock is taken over without asking; the file's text (pid,
    host, stage, since) is only there to say who holds it. Raises RunError when another live
    process does. Creates run_dir if needed."""
    import fcntl

    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        held = str(run_dir.resolve())
        fd = -1 if held in _HELD else os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise RunError(f"{run_dir}: cannot create the run directory's lock file: {e.strerror}") from None
    if fd == -1:
        # Re-entered by the process already holding it (`tunesmith run` holds the lock for the whole
        # pipeline and calls train(), which locks too): flock refuses a second open file of the same
        # lock even within one process.
        yield run_dir / LOCK_FILE
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir} is in use: {_holder(fd)}; wait for it to finish, or use another name=") from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "stage": stage,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        _HELD.add(held)
        try:
            yield run_dir / LOCK_FILE
        finally:
            _HELD.discard(held)
            if (run_dir / LOCK_FILE).exists():
                os.ftruncate(fd, 0)  # released: nobody holds it (the file itself stays, harmlessly)
    finally:
        os.close(fd)  # closing releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        info = {}
    if not info:
        return "another process holds its lock"
    alive = "" if info.get("host") != socket.gethostname() or _pid_alive(int(info.get("pid", 0))) else " (not running?)"
    return (
        f"`{info.get('stage', '?')}` by pid {info.get('pid', '?')}{alive} on {info.get('host', '?')} "
        f"since {info.get('since', '?')}"
    )
