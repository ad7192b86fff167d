"""The split stage's side of `tunesmith train`: which files it trains and validates on.

With `data.val_path`, the user's own files, after a leakage check; without it, the group-aware split
of `data.path` into RUN_DIR/data/split/, whose test.jsonl stays held out for evaluation. The recipe
only asks for the two file names; how they were made is decided here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import Config, ConfigError
from tunesmith.runs import DATA_DIR, LEAKAGE_REPORT_FILE, SPLIT_DIR, SPLIT_FILES, write_json
from tunesmith.split import LeakageError, SplitError, check_leakage, split_file


def split_record(config: Config) -> dict[str, Any]:
    """Which files trained, validated and are held out for evaluation (the split stage's, or the user's)."""
    split_dir = config.run_dir / DATA_DIR / SPLIT_DIR
    if config.data.val_path:
        return {"train": config.data.path, "val": config.data.val_path, "test": config.data.test_path, "by": "user"}
    return {name: str(split_dir / file) for name, file in SPLIT_FILES.items()} | {"by": "tunesmith data split"}


def training_files(config: Config) -> tuple[tuple[Path, Path, str], list[str]]:
    """((train file, val file, their format), notes). With `data.val_path`, the user's files after a
    leakage check (LeakageError above `split.max_leak_fraction` unless `split.allow_leakage`);
    otherwise the split stage's group-aware split of `data.path` into RUN_DIR/data/split/, whose
    test.jsonl is held out for evaluation."""
    split_dir = config.run_dir / DATA_DIR / SPLIT_DIR
    if config.data.val_path:
        leak = check_leakage(
            config.data.path,
            config.data.val_path,
            config.split,
            near_dup_threshold=config.data.near_dup_threshold,
            fmt=config.data.format,
            cache_dir=split_dir,
        )
        write_json(split_dir / LEAKAGE_REPORT_FILE, leak.to_json())
        notes = []
        if leak.leaked:
            message = f"{config.data.val_path}: {leak.headline()} (details: {split_dir / LEAKAGE_REPORT_FILE})"
            if leak.fraction > config.split.max_leak_fraction and not config.split.allow_leakage:
                raise LeakageError(
                    f"{message}. Above split.max_leak_fraction={config.split.max_leak_fraction:g}, the validation "
                    "loss would be measured on rows whose twins are trained on. Split the data with "
                    "`tunesmith data split`, or train anyway with split.allow_leakage=true"
                )
            notes.append(f"warning: {message}")
        return (Path(config.data.path), Path(config.data.val_path), config.data.format), notes
    try:
        result = split_file(
            config.data.path,
            split_dir,
            config.split,
            near_dup_threshold=config.data.near_dup_threshold,
            fmt=config.data.format,
        )
    except SplitError as e:
        raise ConfigError(f"{config.data.path}: {e}") from None
    c = result.counts
    notes = [
        f"split {config.data.path} by group: {c['train']} train / {c['val']} val / {c['test']} test "
        f"(held out for evaluation) / {c['rejects']} rejects -> {split_dir}",
        result.headline(),
        *result.notes,
    ]
    return (result.files["train"], result.files["val"], "messages"), notes
