"""The split stage: group near duplicates and paraphrases, split whole groups into train /
validation / test (stratified), and report leakage.

`split_file` is the entry point (`tunesmith data split`); `check_leakage` checks a validation file
the user brings (`tunesmith data leakage`, and `train` with `data.val_path`).

1. Group: exact copies, MinHash near duplicates (data/dedup.py, word 3-grams of the user turns)
   and pairs whose sentence embeddings reach `split.similarity`; groups are the connected
   components.
2. Split by group, stratum by stratum, in a seeded order: each group lies wholly in one split.
3. Leakage report: every val/test row's nearest train row (exact search) and the count at or
   above the threshold, a histogram picture, and 15 validation rows beside their nearest train
   rows to read.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tunesmith.config import SplitConfig
from tunesmith.data.dedup import exact_key, near_dup_text, near_duplicate_groups
from tunesmith.data.schema import Conversation, DataError, Row
from tunesmith.runs import (
    SPLIT_FILES,
    SPLIT_PLOT_FILE,
    SPLIT_REJECTS_FILE,
    SPLIT_REPORT_FILE,
    write_json,
    write_jsonl,
)
from tunesmith.split.embedding import NO_EMBEDDER, cache_path, embed, nearest, similar_pairs

SPLITS = ("train", "val", "test")
ROWS_TO_READ = 15  # the guide: "read 15 random rows"
_SNIPPET = 300  # characters of a row shown in the report's rows to read
_HIST_BINS = 20


class SplitError(Exception):
    """The data cannot be split as asked (too few groups); the message says how to fix it."""


class LeakageError(Exception):
    """A validation file shares too many rows with the training file (`train` with data.val_path)."""


# ============================================================================ texts


def user_text(conversation: Conversation) -> str:
    """The user turns: what a paraphrase rewords (system prompts are often shared by every row)."""
    return "\n".join(
        m["content"] for m in conversation.messages if m.get("role") == "user" and isinstance(m.get("content"), str)
    )


def _texts(conversations: Sequence[Conversation], what: str) -> list[str]:
    if what == "conversation":
        return [near_dup_text(c.messages) for c in conversations]
    return [user_text(c) for c in conversations]


def row_id(row: Row) -> str:
    c = row.conversation
    return c.id if c is not None and c.id is not None else f"line {row.source.row}"


def _read(path: str | Path, fmt: str) -> list[Row]:
    from tunesmith.data.validate import read_rows

    return read_rows(path, fmt)[1]


# ============================================================================ grouping


def group_labels(
    conversations: Sequence[Conversation],
    config: SplitConfig,
    near_dup_threshold: float,
    embeddings: np.ndarray | None,
) -> np.ndarray:
    """A group label per conversation: connected components of exact copies, MinHash near
    duplicates and embedding pairs at or above `config.similarity`. Labels are numbered in order
    of each group's first row, so they do not depend on how the graph was built."""
    n = len(conversations)
    pairs = [np.empty((0, 2), dtype=np.int64)]
    memo: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, c in enumerate(conversations):
        j = first.setdefault(exact_key(c.messages, memo), i)
        if j != i:
            pairs.append(np.array([[j, i]]))
    # MinHash on the same text as the embedder (the user turns by default): one question asked
    # twice is a leak whatever the two answers say.
    for group in near_duplicate_groups(_texts(conversations, config.embed), near_dup_threshold):
        pairs.append(np.stack([np.full(len(group) - 1, group[0]), group[1:]], axis=1))
    if embeddings is not None:
        pairs.append(similar_pairs(embeddings, config.similarity))
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    _, first_seen = np.unique(label, return_index=True)
    order = np.empty(len(first_seen), dtype=np.int64)
    order[np.argsort(first_seen)] = np.arange(len(first_seen))
    return order[label]


# ============================================================================ strata


def _field(row_json: dict[str, Any], path: str) -> Any:
    """A dotted field of a row; `metadata.x` also finds a top-level `x` (extra fields of a messages
    row are its metadata)."""
    for candidate in (path, path.removeprefix("metadata.")):
        node: Any = row_json
        for part in candidate.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _kmeans(points: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
    """Plain Lloyd k-means on unit vectors (cosine), seeded: deterministic, a few lines, and fast
    enough for group centroids (faiss's is threaded, and its sums are not bit-stable)."""
    rng = np.random.default_rng(seed)
    centres = points[rng.choice(len(points), size=k, replace=False)]
    for _ in range(iters):
        label = (points @ centres.T).argmax(axis=1)
        for c in range(k):
            members = points[label == c]
            if len(members):
                mean = members.mean(axis=0)
                centres[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return (points @ centres.T).argmax(axis=1)


def strata(
    conversations: Sequence[Conversation],
    label: np.ndarray,
    config: SplitConfig,
    embeddings: np.ndarray | None,
) -> list[str]:
    """A stratum name per group (index = group label): the majority value of the field among the
    group's rows, or the group's topic cluster (`auto`), or one stratum (`none`)."""
    n_groups = int(label.max()) + 1 if len(label) else 0
    how = config.stratify_by
    if how == "none":
        return ["all"] * n_groups
    if how == "auto":
        if embeddings is None:
            raise SplitError("split.stratify_by=auto clusters embeddings: set split.embedder (not `none`)")
        centroids = np.zeros((n_groups, embeddings.shape[1]), dtype=np.float64)
        np.add.at(centroids, label, embeddings)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        # ~20 groups per topic squared: 2 topics for 100 groups, 9 for 1,500, capped at 12 so each
        # topic stays large enough to appear in every split.
        k = int(min(12, max(2, round(np.sqrt(n_groups / 20)))))
        if n_groups < 2 * k:
            return ["all"] * n_groups
        return [f"topic {t}" for t in _kmeans(centroids, k, config.seed)]
    votes: list[Counter] = [Counter() for _ in range(n_groups)]
    for c, g in zip(conversations, label):
        value = _field(c.to_json(), how)
        votes[g][str(value) if value is not None else "(missing)"] += 1
    if all(set(v) == {"(missing)"} for v in votes):
        raise SplitError(f"split.stratify_by={how}: no row has that field (dotted path, e.g. metadata.category)")
    # Majority, ties to the smallest name, so the result does not depend on row order.
    return [min(v.items(), key=lambda kv: (-kv[1], kv[0]))[0] for v in votes]


# ============================================================================ assignment


def assign(label: np.ndarray, stratum: Sequence[str], val: float, test: float, seed: int) -> np.ndarray:
    """A split index (0 train, 1 val, 2 test) per group. Within each stratum, groups are taken in a
    seeded random order and each goes to the held-out split furthest below its share of the
    stratum's rows, when that split lacks at least half the group; else to train. So every split
    gets its proportion of every stratum that has enough groups, and no group is cut."""
    sizes = np.bincount(label)
    out = np.zeros(len(sizes), dtype=np.int64)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for g, s in enumerate(stratum):
        by_stratum[s].append(g)
    rng = random.Random(seed)
    for name in sorted(by_stratum):
        groups = by_stratum[name]
        rng.shuffle(groups)
        total = int(sizes[groups].sum())
        target = {1: val * total, 2: test * total}
        have = {1: 0, 2: 0}
        for g in groups:
            k = max(target, key=lambda s: target[s] - have[s])
            if target[k] - have[k] >= sizes[g] / 2:
                out[g] = k
                have[k] += int(sizes[g])
    for k, share in ((1, val), (2, test)):
        # A small stratum-wise target can round every group away; a split asked for gets a group.
        if share > 0 and not (out == k).any():
            train_groups = np.flatnonzero(out == 0)
            if len(train_groups) < 2:
                raise SplitError(
                    f"the rows form {len(sizes)} group(s) of near duplicates/paraphrases: too few to hold out "
                    "a split without leakage. Raise split.similarity, or give your own data.val_path"
                )
            out[train_groups[np.argmin(sizes[train_groups], kind="stable")]] = k
    return out


# ============================================================================ the stage


def _leak_rule(threshold: float, max_similarity: float | None) -> str:
    if max_similarity is None:  # no embedder: exact copies and MinHash near duplicates only
        return "are a copy or MinHash near duplicate of a train row"
    shown = math.floor(max_similarity * 1000) / 1000  # 0.69996 must not print as 0.700 beside ">= 0.7"
    return f"have a train row at cosine >= {threshold:g} or are a near copy of one (max cosine {shown:.3f})"


@dataclass
class SplitResult:
    rows_read: int
    counts: dict[str, int]  # train, val, test, rejects
    groups: int
    largest_group: int
    leaks: dict[str, int]  # val/test rows whose nearest train row reaches the threshold
    out_dir: Path
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.out_dir / SPLIT_FILES[name] for name in SPLITS}

    def headline(self) -> str:
        leak = self.report["leakage"]
        parts = [
            f"{leak[s]['above_threshold']} of {leak[s]['rows']} {s} rows {_leak_rule(leak['threshold'], leak[s]['max'])}"
            for s in ("val", "test")
            if leak[s]["rows"]
        ]
        return "leakage: " + "; ".join(parts)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"{self.rows_read} rows read = {c['train']} train + {c['val']} val + {c['test']} test + "
            f"{c['rejects']} rejects -> {self.out_dir}",
            f"{self.groups} groups (largest {self.largest_group} rows); every group lies in one split",
            self.headline(),
        ]
        return "\n".join(lines + self.notes)


def split_file(
    path: str | Path,
    out_dir: str | Path,
    config: SplitConfig,
    *,
    near_dup_threshold: float = 0.85,
    fmt: str = "auto",
    progress: bool = False,
) -> SplitResult:
    """Split `path` into `out_dir`/{train,val,test}.jsonl (rows as messages JSONL, every field kept),
    rejects.jsonl, split_report.json and a similarity histogram; every row read lands in exactly
    one of the four files. Raises DataError (unreadable input) or SplitError (too few groups)."""
    if config.val + config.test >= 1:
        raise SplitError(f"split.val + split.test = {config.val + config.test:g}: nothing would be left to train on")
    out_dir = Path(out_dir)
    rows = _read(path, fmt)
    good = [r for r in rows if r.conversation is not None]
    if not good:
        raise DataError(path, "no readable conversation to split (see `tunesmith data check`)")
    convs = [r.conversation for r in good]
    embeddings = None
    if config.embedder != NO_EMBEDDER:
        embeddings = embed(
            _texts(convs, config.embed), config.embedder, cache=cache_path(out_dir, config.embedder), progress=progress
        )
    label = group_labels(convs, config, near_dup_threshold, embeddings)
    strata_names = strata(convs, label, config, embeddings)
    group_split = assign(label, strata_names, config.val, config.test, config.seed)
    row_split = group_split[label]

    rejects = [
        _reject(r, "unreadable", "; ".join(f.message for f in r.findings)) for r in rows if r.conversation is None
    ]
    keep = np.ones(len(good), dtype=bool)
    if config.dedup:
        _, representative = np.unique(label, return_index=True)  # the first row of each group
        keep[:] = False
        keep[representative] = True
        for i in np.flatnonzero(~keep):
            rep = good[representative[label[i]]]
            rejects.append(
                {
                    **_reject(good[i], "near_duplicate_group", f"same group as {row_id(rep)}"),
                    "representative": row_id(rep),
                    "representative_line": rep.source.row,
                }
            )
    index = {name: [i for i in range(len(good)) if row_split[i] == k and keep[i]] for k, name in enumerate(SPLITS)}
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {
        name: write_jsonl(out_dir / SPLIT_FILES[name], (convs[i].to_json() for i in idx)) for name, idx in index.items()
    }
    counts["rejects"] = write_jsonl(out_dir / SPLIT_REJECTS_FILE, rejects)
    if sum(counts.values()) != len(rows):  # the promise the stage makes; never silently broken
        raise AssertionError(f"row accounting: {len(rows)} read but {counts} written")

    leakage, near = _leakage(good, index, embeddings, label, config)
    sizes = np.bincount(label)
    report: dict[str, Any] = {
        "input": str(path),
        "rows_read": len(rows),
        "counts": counts,
        "settings": {**config.model_dump(mode="json"), "near_dup_threshold": near_dup_threshold},
        "groups": {
            "count": int(len(sizes)),
            "with_several_rows": int((sizes > 1).sum()),
            "rows_in_shared_groups": int(sizes[sizes > 1].sum()),
            "largest": int(sizes.max()),
        },
        "strata": _strata_table(strata_names, label, row_split),
        "leakage": leakage,
        "rows_to_read": _rows_to_read(good, near, config.seed),
        "nearest": _nearest_json(good, near),
        "plot": None,
    }
    notes = []
    if sizes.max() > 0.5 * len(good):
        notes.append(
            f"warning: one group holds {sizes.max()} of {len(good)} rows; it cannot be held out. If the rows are "
            "not really paraphrases, raise split.similarity"
        )
    if embeddings is not None:
        report["plot"] = _plot(near, config.similarity, out_dir / SPLIT_PLOT_FILE)
    write_json(out_dir / SPLIT_REPORT_FILE, report)
    leaks = {s: leakage[s]["above_threshold"] for s in ("val", "test")}
    return SplitResult(len(rows), counts, int(len(sizes)), int(sizes.max()), leaks, out_dir, report, notes)


def _reject(row: Row, code: str, message: str) -> dict[str, Any]:
    return {"line": row.source.row, "reasons": [{"code": code, "message": message}], "row": row.raw}


def _strata_table(names: list[str], label: np.ndarray, row_split: np.ndarray) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for g, k in zip(label, row_split):
        table[names[g]][SPLITS[k]] += 1
    return dict(sorted(table.items()))


@dataclass
class _Near:
    split: str
    row: int  # position in the rows list
    train: int  # position of its nearest train row, -1 without embeddings
    similarity: float  # nan without embeddings
    leak: bool


def _leakage(
    good: list[Row],
    index: dict[str, list[int]],
    embeddings: np.ndarray | None,
    label: np.ndarray,
    config: SplitConfig,
) -> tuple[dict[str, Any], list[_Near]]:
    """Per val/test row: its nearest train row and cosine (exact search). A row leaks when that
    cosine reaches the threshold or it shares a group with a train row (MinHash links count too)."""
    train_idx = np.array(index["train"], dtype=np.int64)
    train_groups = set(label[train_idx].tolist())
    out: dict[str, Any] = {"threshold": config.similarity}
    near: list[_Near] = []
    for name in ("val", "test"):
        idx = np.array(index[name], dtype=np.int64)
        if embeddings is not None:
            best, score = nearest(embeddings[idx], embeddings[train_idx])
        else:
            best, score = np.full(len(idx), -1), np.full(len(idx), np.nan)
        leaked = 0
        for i, b, s in zip(idx.tolist(), best.tolist(), score.tolist()):
            leak = int(label[i]) in train_groups or (not np.isnan(s) and s >= config.similarity)
            leaked += leak
            near.append(_Near(name, i, int(train_idx[b]) if b >= 0 else -1, s, leak))
        finite = score[~np.isnan(score)]
        out[name] = {
            "rows": int(len(idx)),
            "above_threshold": int(leaked),
            "max": round(float(finite.max()), 4) if len(finite) else None,
            "median": round(float(np.median(finite)), 4) if len(finite) else None,
            "histogram": _histogram(finite),
        }
    return out, near


def _nearest_json(good: list[Row], near: list[_Near]) -> list[dict[str, Any]]:
    out = []
    for e in near:
        item: dict[str, Any] = {"split": e.split, "id": row_id(good[e.row]), "line": good[e.row].source.row}
        if e.train >= 0:
            t = good[e.train]
            item.update(nearest_train_id=row_id(t), nearest_train_line=t.source.row, similarity=round(e.similarity, 4))
        item["leak"] = e.leak
        out.append(item)
    return out


def _histogram(scores: np.ndarray) -> dict[str, list]:
    if not len(scores):
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(scores, bins=_HIST_BINS, range=(0.0, 1.0))
    return {"edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in counts]}


def _rows_to_read(good: list[Row], near: list[_Near], seed: int) -> list[dict[str, Any]]:
    """ROWS_TO_READ random validation rows beside their nearest train rows: the check no metric
    replaces (are these really different requests?)."""
    val = [e for e in near if e.split == "val"]
    out = []
    for e in random.Random(seed).sample(val, min(ROWS_TO_READ, len(val))):
        item: dict[str, Any] = {"val_id": row_id(good[e.row]), "val": _snippet(good[e.row])}
        if e.train >= 0:
            item.update(
                similarity=round(e.similarity, 4), train_id=row_id(good[e.train]), train=_snippet(good[e.train])
            )
        out.append(item)
    return out


def _snippet(row: Row) -> str:
    text = user_text(row.conversation) if row.conversation else ""
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _plot(near: list[_Near], threshold: float, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunesmith.runs import write_png

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        for name, colour in (("val", "tab:orange"), ("test", "tab:green")):
            scores = [e.similarity for e in near if e.split == name and e.train >= 0]
            if scores:
                ax.hist(scores, bins=40, range=(0, 1), alpha=0.6, color=colour, label=f"{name} ({len(scores)} rows)")
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"group threshold {threshold:g}")
        ax.set_xlabel("cosine similarity to the nearest train row")
        ax.set_ylabel("rows")
        ax.set_title("How close is each held-out row to the training set?")
        ax.legend()
        write_png(path, fig)
    finally:
        plt.close(fig)
    return path.name


# ============================================================================ a user's validation file


@dataclass
class LeakageResult:
    train_rows: int
    val_rows: int
    leaked: int  # val rows with a train row at or above the threshold (or an exact/MinHash twin)
    threshold: float
    summary: dict[str, Any]  # rows, above_threshold, max, median, histogram
    nearest: list[dict[str, Any]]  # per val row: id, line, nearest train id/line, similarity, leak
    rows_to_read: list[dict[str, Any]]

    @property
    def fraction(self) -> float:
        return self.leaked / self.val_rows if self.val_rows else 0.0

    def headline(self) -> str:
        rule = _leak_rule(self.threshold, self.summary.get("max"))
        return f"leakage: {self.leaked} of {self.val_rows} validation rows ({self.fraction:.1%}) {rule}"

    def to_json(self) -> dict[str, Any]:
        return {
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "leaked": self.leaked,
            "fraction": self.fraction,
            "threshold": self.threshold,
            "summary": self.summary,
            "nearest": self.nearest,
            "rows_to_read": self.rows_to_read,
        }


def check_leakage(
    train_path: str | Path,
    val_path: str | Path,
    config: SplitConfig,
    *,
    near_dup_threshold: float = 0.85,
    fmt: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> LeakageResult:
    """Does a validation file share rows (copies, near copies, paraphrases) with a training file?"""
    train_rows = [r for r in _read(train_path, fmt) if r.conversation is not None]
    val_rows = [r for r in _read(val_path, fmt) if r.conversation is not None]
    if not train_rows or not val_rows:
        raise DataError(train_path if not train_rows else val_path, "no readable conversation")
    good = train_rows + val_rows
    convs = [r.conversation for r in good]
    embeddings = None
    if config.embedder != NO_EMBEDDER:
        cache = cache_path(cache_dir, config.embedder) if cache_dir is not None else None
        embeddings = embed(_texts(convs, config.embed), config.embedder, cache=cache, progress=progress)
    # Exact copies and MinHash twins across the two files (one group spanning both) leak too.
    label = group_labels(convs, config, near_dup_threshold, None)
    n = len(train_rows)
    index = {"train": list(range(n)), "val": list(range(n, len(good))), "test": []}
    leakage, near = _leakage(good, index, embeddings, label, config)
    return LeakageResult(
        n,
        len(val_rows),
        leakage["val"]["above_threshold"],
        config.similarity,
        leakage["val"],
        _nearest_json(good, near),
        _rows_to_read(good, near, config.seed),
    )
