"""`train` takes its train and validation files from the split stage: near duplicates and
paraphrases never sit in both, and a user's validation file is checked for leaks first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.split.test_embedding import PARAPHRASES
from tests.split.test_split import distinct_questions, near_copies, row, write_rows
from tunesmith.config import load_config
from tunesmith.runs import DATA_DIR, LEAKAGE_REPORT_FILE, SPLIT_DIR, SPLIT_FILES
from tunesmith.split import LeakageError
from tunesmith.split.training import split_record, training_files


def config_for(tmp_path: Path, data: Path, *overrides: str):
    return load_config(
        overrides=[
            f"runs_dir={tmp_path / 'runs'}",
            "name=t",
            "model.name_or_path=unused",
            f"data.path={data}",
            *overrides,
        ]
    )


def user_texts(path: Path) -> set[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {
        m["content"].lower().replace("  ", " ").rstrip("?").removesuffix(" please")
        for r in rows
        for m in r["messages"]
        if m["role"] == "user"
    }


@pytest.mark.slow
def test_near_duplicates_and_paraphrases_never_sit_in_both_train_and_validation(tmp_path: Path) -> None:
    rows = [row(i, q) for i, q in enumerate(distinct_questions(80, seed=4))]
    groups = []
    for q in distinct_questions(10, seed=11):  # lexical near copies
        groups.append({f"r{len(rows) + k:04d}" for k in range(4)})
        rows += [row(len(rows) + k, v) for k, v in enumerate(near_copies(q))]
    for group in PARAPHRASES:  # rewordings only the real embedder links
        groups.append({f"r{len(rows) + k:04d}" for k in range(len(group))})
        rows += [row(len(rows) + k, v) for k, v in enumerate(group)]
    data = write_rows(tmp_path / "data.jsonl", rows)
    config = config_for(tmp_path, data, "split.val=0.3", "split.test=0.2")
    (train_file, val_file, fmt), notes = training_files(config)
    split_dir = config.run_dir / DATA_DIR / SPLIT_DIR
    assert (train_file, val_file, fmt) == (split_dir / SPLIT_FILES["train"], split_dir / SPLIT_FILES["val"], "messages")
    ids = {
        name: {json.loads(line)["id"] for line in (split_dir / file).read_text().splitlines()}
        for name, file in SPLIT_FILES.items()
    }
    for group in groups:
        assert sum(bool(group & ids[name]) for name in ids) == 1, group
    assert not user_texts(train_file) & user_texts(val_file)
    assert sum(map(len, ids.values())) == len(rows) and ids["val"] and ids["test"]
    assert any("test (held out for evaluation)" in n for n in notes)
    # The manifest says which files trained, validated and are held out.
    assert split_record(config)["test"] == str(split_dir / SPLIT_FILES["test"])


def test_a_leaky_user_validation_file_stops_training_unless_allowed(tmp_path: Path) -> None:
    questions = distinct_questions(60, seed=6)
    data = write_rows(tmp_path / "train.jsonl", [row(i, q) for i, q in enumerate(questions[:50])])
    val_rows = [row(100 + i, q) for i, q in enumerate(questions[50:])] + [row(200, questions[0])]
    val = write_rows(tmp_path / "val.jsonl", val_rows)  # 1 of 11 rows (9%) is a training row
    overrides = [f"data.val_path={val}", "split.embedder=none"]
    with pytest.raises(LeakageError, match=r"1 of 11 validation rows .*split.allow_leakage"):
        training_files(config_for(tmp_path, data, *overrides))
    config = config_for(tmp_path, data, *overrides, "split.allow_leakage=true")
    (train_file, val_file, _), notes = training_files(config)
    assert (train_file, val_file) == (data, val)
    assert len(notes) == 1 and notes[0].startswith("warning:") and "1 of 11" in notes[0]
    report = json.loads((config.run_dir / DATA_DIR / SPLIT_DIR / LEAKAGE_REPORT_FILE).read_text())
    assert report["leaked"] == 1 and [e["id"] for e in report["nearest"] if e["leak"]] == ["r0200"]
    # Below split.max_leak_fraction it only warns.
    config = config_for(tmp_path, data, *overrides, "split.max_leak_fraction=0.1")
    assert training_files(config)[1][0].startswith("warning:")
