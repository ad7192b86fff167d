"""The split stage: groups never straddle splits, strata hold, leaks are caught, rows are accounted for."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config import SplitConfig
from tunesmith.runs import SPLIT_FILES, SPLIT_PLOT_FILE, SPLIT_REJECTS_FILE, SPLIT_REPORT_FILE
from tunesmith.split import ROWS_TO_READ, SplitError, assign, check_leakage, split_file

LEXICAL = SplitConfig(embedder="none")  # MinHash groups only: no model, fast

TOPICS = ["invoice", "shipping", "login", "refund", "warranty", "printer", "garden", "recipe", "tax", "visa"]
VERBS = ["explain", "describe", "summarise", "list", "compare", "outline", "review", "define"]
THINGS = ["the rules", "the costs", "the steps", "the risks", "the history", "the options", "the limits"]


def row(i: int, question: str, **extra) -> dict:
    return {
        "id": f"r{i:04d}",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Answer number {i}."},
        ],
        **extra,
    }


def distinct_questions(n: int, seed: int = 0) -> list[str]:
    """Questions that differ in several words each (never MinHash near duplicates of each other)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(
            f"Please {rng.choice(VERBS)} {rng.choice(THINGS)} of {rng.choice(TOPICS)} number {rng.randrange(10**6)} "
            f"for client {rng.randrange(10**6)} in region {rng.randrange(10**6)}"
        )
    return sorted(out)


def write_rows(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def read_split(out: Path) -> dict[str, list[dict]]:
    return {
        name: [json.loads(line) for line in (out / file).read_text(encoding="utf-8").splitlines()]
        for name, file in SPLIT_FILES.items()
    }


def near_copies(question: str) -> list[str]:
    """Lexical near duplicates: what MinHash links (word 3-gram Jaccard 0.94 to 1, well above 0.85)."""
    return [question, question.lower(), question + " please", question.replace(" ", "  ") + "?"]


def planted_rows(n_plain: int = 200, n_groups: int = 20, seed: int = 0) -> tuple[list[dict], list[set[str]]]:
    questions = distinct_questions(n_plain + n_groups, seed)
    rows, groups = [], []
    for q in questions[:n_plain]:
        rows.append(row(len(rows), q))
    for q in questions[n_plain:]:
        ids = set()
        for variant in near_copies(q):
            ids.add(f"r{len(rows):04d}")
            rows.append(row(len(rows), variant))
        groups.append(ids)
    random.Random(seed).shuffle(rows)  # groups scattered through the file
    return rows, groups


def split_of(parts: dict[str, list[dict]]) -> dict[str, str]:
    return {r["id"]: name for name, rows in parts.items() for r in rows}


def test_planted_near_duplicate_groups_never_straddle_and_every_row_is_accounted_for(tmp_path: Path) -> None:
    rows, groups = planted_rows()
    src = write_rows(tmp_path / "in.jsonl", rows + ["{not json"])
    result = split_file(src, tmp_path / "out", LEXICAL.model_copy(update={"seed": 3}))
    parts = read_split(tmp_path / "out")
    where = split_of(parts)
    for group in groups:
        assert len({where[i] for i in group}) == 1, group
    # Every input row in exactly one output: 280 conversations + 1 unreadable line.
    counts = {name: len(parts[name]) for name in parts}
    rejects = (tmp_path / "out" / SPLIT_REJECTS_FILE).read_text().splitlines()
    assert sum(counts.values()) + len(rejects) == len(rows) + 1 == result.rows_read
    assert sorted(where) == sorted(r["id"] for r in rows)
    assert json.loads(rejects[0])["reasons"][0]["code"] == "unreadable"
    assert result.counts == {**counts, "rejects": 1}
    # Shares near the asked 10% / 10% (whole groups of 1 or 4 rows).
    assert 0.07 <= counts["val"] / len(rows) <= 0.13 and 0.07 <= counts["test"] / len(rows) <= 0.13
    # The split made by tunesmith has no leaks, and the report says so.
    report = json.loads((tmp_path / "out" / SPLIT_REPORT_FILE).read_text())
    assert report["leakage"]["val"]["above_threshold"] == 0 == report["leakage"]["test"]["above_threshold"]
    assert report["groups"]["with_several_rows"] == len(groups)
    assert len(report["rows_to_read"]) == ROWS_TO_READ


def test_rows_keep_every_field(tmp_path: Path) -> None:
    rows = [
        row(i, q, category="billing", metadata={"source": "crm", "n": i}) for i, q in enumerate(distinct_questions(30))
    ]
    rows[0]["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    split_file(write_rows(tmp_path / "in.jsonl", rows), tmp_path / "out", LEXICAL)
    written = {r["id"]: r for part in read_split(tmp_path / "out").values() for r in part}
    assert written == {r["id"]: r for r in rows}


def test_the_same_seed_gives_the_same_split_and_another_seed_another(tmp_path: Path) -> None:
    rows, _ = planted_rows(n_plain=120, n_groups=10)
    src = write_rows(tmp_path / "in.jsonl", rows)
    files = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        split_file(src, tmp_path / name, LEXICAL.model_copy(update={"seed": seed}))
        files.append({f: (tmp_path / name / f).read_bytes() for f in SPLIT_FILES.values()})
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_dedup_keeps_one_row_per_group_and_names_the_representative(tmp_path: Path) -> None:
    rows, groups = planted_rows(n_plain=60, n_groups=5)
    src = write_rows(tmp_path / "in.jsonl", rows)
    result = split_file(src, tmp_path / "out", LEXICAL.model_copy(update={"dedup": True}))
    kept = set(split_of(read_split(tmp_path / "out")))
    rejects = [json.loads(line) for line in (tmp_path / "out" / SPLIT_REJECTS_FILE).read_text().splitlines()]
    assert result.counts["rejects"] == len(rejects) == 3 * len(groups)
    for group in groups:
        (rep,) = group & kept  # exactly one survivor per group
        dropped = [r for r in rejects if r["row"]["id"] in group]
        assert len(dropped) == 3 and {r["representative"] for r in dropped} == {rep}
        assert {r["reasons"][0]["code"] for r in dropped} == {"near_duplicate_group"}
    assert len(kept) + len(rejects) == len(rows)


def test_stratification_puts_every_category_in_every_split_in_proportion(tmp_path: Path) -> None:
    questions = distinct_questions(600, seed=5)
    sizes = {"billing": 300, "shipping": 200, "legal": 100}
    categories = [c for c, n in sizes.items() for _ in range(n)]
    random.Random(0).shuffle(categories)
    rows = [row(i, q, metadata={"category": c}) for i, (q, c) in enumerate(zip(questions, categories))]
    src = write_rows(tmp_path / "in.jsonl", rows)
    config = LEXICAL.model_copy(update={"stratify_by": "metadata.category", "val": 0.2, "test": 0.1})
    result = split_file(src, tmp_path / "out", config)
    parts = read_split(tmp_path / "out")
    for name, share in (("val", 0.2), ("test", 0.1)):
        found = Counter(r["metadata"]["category"] for r in parts[name])
        for category, n in sizes.items():
            assert found[category] == pytest.approx(share * n, abs=1), (name, category, found)
    assert result.report["strata"]["legal"] == {"train": 70, "val": 20, "test": 10}


def test_a_stratum_of_whole_groups_is_never_cut(tmp_path: Path) -> None:
    # One group of 40 rows and 60 singletons: the group goes wholly to one split.
    label = np.array([0] * 40 + list(range(1, 61)))
    for seed in range(5):
        split = assign(label, ["all"] * 61, 0.1, 0.1, seed)
        assert split[0] == 0  # 40 rows can never fill a 10-row share by at least half of itself
        assert (split == 1).sum() > 0 and (split == 2).sum() > 0


def test_too_few_groups_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(SplitError, match="split.similarity"):
        assign(np.zeros(50, dtype=int), ["all"], 0.1, 0.1, 0)


def test_a_leaky_validation_file_is_caught_and_the_command_exits_1(tmp_path: Path) -> None:
    questions = distinct_questions(80, seed=9)
    train = write_rows(tmp_path / "train.jsonl", [row(i, q) for i, q in enumerate(questions[:60])])
    # Val: 15 new questions, 3 exact copies and 2 near copies of training rows.
    leaky = [row(100 + i, q) for i, q in enumerate(questions[60:75])]
    leaky += [row(200 + i, questions[i]) for i in range(3)] + [
        row(300 + i, questions[10 + i] + " please") for i in range(2)
    ]
    val = write_rows(tmp_path / "val.jsonl", leaky)
    result = check_leakage(train, val, LEXICAL)
    assert (result.train_rows, result.val_rows, result.leaked) == (60, 20, 5)
    leaked_ids = {e["id"] for e in result.nearest if e["leak"]}
    assert leaked_ids == {"r0200", "r0201", "r0202", "r0300", "r0301"}

    runner = CliRunner()
    out = runner.invoke(app, ["data", "leakage", str(train), str(val), "--embedder", "none"])
    assert out.exit_code == 1, out.output
    assert "5 of 20 validation rows" in out.output
    clean = write_rows(tmp_path / "clean.jsonl", leaky[:15])
    out = runner.invoke(
        app, ["data", "leakage", str(train), str(clean), "--embedder", "none", "--report", str(tmp_path / "r.json")]
    )
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "r.json").read_text())["leaked"] == 0


def test_split_command_writes_the_files_and_prints_the_accounting(tmp_path: Path) -> None:
    rows, _ = planted_rows(n_plain=80, n_groups=5)
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = CliRunner().invoke(
        app,
        ["data", "split", str(src), "--out", str(tmp_path / "o"), "--val", "0.2", "--test", "0", "--embedder", "none"],
    )
    assert out.exit_code == 0, out.output
    assert f"{len(rows)} rows read" in out.output and "leakage: 0 of" in out.output
    assert (tmp_path / "o" / "test.jsonl").read_text() == ""
    assert not (tmp_path / "o" / SPLIT_PLOT_FILE).exists()  # no embeddings, no similarity picture
    bad = CliRunner().invoke(
        app, ["data", "split", str(src), "--out", str(tmp_path / "p"), "--val", "0.6", "--test", "0.5"]
    )
    assert bad.exit_code == 2 and "nothing would be left to train on" in bad.output


def test_auto_strata_are_topic_clusters_and_each_appears_in_every_split() -> None:
    from tunesmith.data.schema import Conversation, Source
    from tunesmith.split import strata

    rng = np.random.default_rng(0)
    topics = rng.normal(size=(3, 32))
    sizes = [600, 300, 100]
    truth = np.repeat(np.arange(3), sizes)
    emb = topics[truth] + 0.3 * rng.normal(size=(len(truth), 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    convs = [Conversation([{"role": "user", "content": str(i)}], Source("x", i + 1)) for i in range(len(truth))]
    label = np.arange(len(truth))  # every row its own group
    names = strata(convs, label, SplitConfig(stratify_by="auto"), emb)
    # k = round(sqrt(1000 / 20)) = 7 clusters: each lies within one true topic.
    assert len(set(names)) == 7
    for name in set(names):
        assert len({truth[i] for i, n in enumerate(names) if n == name}) == 1
    split = assign(label, names, 0.1, 0.1, seed=0)
    for t, n in enumerate(sizes):
        for k in (1, 2):
            assert (split[truth == t] == k).sum() == pytest.approx(0.1 * n, abs=len(set(names)))
