"""The split with the real embedding model (all-MiniLM-L6-v2 from the offline package), the
embedding cache, the neighbour search, and the threshold's figures on the labelled paraphrase set."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from tests.split.test_split import distinct_questions, read_split, row, split_of, write_rows
from tunesmith.config import SplitConfig
from tunesmith.runs import SPLIT_PLOT_FILE, SPLIT_REPORT_FILE
from tunesmith.split import embedding as embed_mod
from tunesmith.split import split_file
from tunesmith.split.paraphrases import GROUPS, labelled_pairs, measure

# Rewordings a person writes, not lexical copies: MinHash links none of these pairs.
PARAPHRASES = [
    ["How do I reset my password?", "How can I reset my password?", "how to reset my password", "Reset password how?"],
    ["I want a refund for my order.", "I would like a refund for my order.", "Refund my order, please."],
    [
        "How many orders were placed in March 2024?",
        "How many orders were made in March 2024?",
        "Number of orders placed in March 2024?",
    ],
    ["Which products are out of stock?", "What products are out of stock?", "List the products out of stock."],
]


UNRELATED = [
    "What is the boiling point of water at high altitude?",
    "Recommend a novel for a long train journey.",
    "How do I fix a flat bicycle tyre?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "What are the rules of chess castling?",
    "Suggest a vegetarian dinner for six guests.",
    "Why is the sky blue?",
    "How long should I boil an egg for a runny yolk?",
    "Give me tips for a job interview in finance.",
]


@pytest.fixture(scope="module")
def model():
    return embed_mod.load_embedder(embed_mod.DEFAULT_EMBEDDER)


@pytest.mark.slow
def test_planted_paraphrases_never_straddle_with_the_real_model(tmp_path: Path, model) -> None:
    rows, groups = [row(i, q) for i, q in enumerate(distinct_questions(60, seed=2))], []
    for group in PARAPHRASES:
        groups.append({f"r{len(rows) + k:04d}" for k in range(len(group))})
        rows += [row(len(rows) + k, q) for k, q in enumerate(group)]
    src = write_rows(tmp_path / "in.jsonl", rows)
    config = SplitConfig(val=0.25, test=0.25)  # large held-out shares: a straddle would be likely
    result = split_file(src, tmp_path / "out", config)
    where = split_of(read_split(tmp_path / "out"))
    for group in groups:
        assert len({where[i] for i in group}) == 1, group
    # MinHash alone does not see them (so the embedder is what held them together)...
    lexical = split_file(src, tmp_path / "lex", SplitConfig(val=0.25, test=0.25, embedder="none"))
    assert lexical.report["groups"]["with_several_rows"] < len(PARAPHRASES)
    # ...and the exact report agrees: no held-out row has a train row at or above the threshold.
    report = json.loads((tmp_path / "out" / SPLIT_REPORT_FILE).read_text())
    assert result.leaks == {"val": 0, "test": 0}
    assert all(e["similarity"] < config.similarity for e in report["nearest"])
    assert (tmp_path / "out" / SPLIT_PLOT_FILE).stat().st_size > 10_000


@pytest.mark.slow
def test_embeddings_are_cached_by_content(tmp_path: Path, model, monkeypatch) -> None:
    texts = ["How do I reset my password?", "Where is my parcel?", "How do I reset my password?"]
    cache = embed_mod.cache_path(tmp_path, embed_mod.DEFAULT_EMBEDDER)
    first = embed_mod.embed(texts, embed_mod.DEFAULT_EMBEDDER, cache=cache)
    assert first.shape == (3, 384) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert np.array_equal(first[0], first[2])

    def no_model(name):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(embed_mod, "load_embedder", no_model)
    again = embed_mod.embed(list(reversed(texts)), embed_mod.DEFAULT_EMBEDDER, cache=cache)
    assert np.array_equal(again, first[::-1])


@pytest.mark.slow
def test_the_default_threshold_holds_its_measured_figures_on_the_labelled_set(model) -> None:
    texts, _, _ = labelled_pairs()
    emb = embed_mod.embed(texts, embed_mod.DEFAULT_EMBEDDER)
    (at_default,) = measure(emb, [SplitConfig().similarity])
    # Measured at 0.70: pairs 0.74 precision / 0.52 recall, groups 0.65 / 0.62 (bench/split.py
    # prints the table); a regression in the embedder or the texts shows here first.
    assert at_default.precision >= 0.7 and at_default.recall >= 0.45
    assert at_default.group_precision >= 0.6 and at_default.group_recall >= 0.55
    # Recall rises as the threshold falls, precision falls: the trade-off the default sits on.
    rows = measure(emb, [0.5, 0.75, 0.9])
    assert rows[0].recall > rows[1].recall > rows[2].recall
    assert rows[0].precision < rows[1].precision < rows[2].precision
    assert sum(len(g) * (len(g) - 1) // 2 for g in GROUPS) == rows[0].true_links + (
        rows[0].recall and round(rows[0].true_links / rows[0].recall) - rows[0].true_links
    )


def test_exact_and_approximate_neighbours_agree() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, 64))
    points = np.repeat(centres, 3, axis=0) + 0.15 * rng.normal(size=(900, 64))  # triples of neighbours
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    exact = embed_mod.similar_pairs(points, 0.9, exact_max=10**9)
    approx = embed_mod.similar_pairs(points, 0.9, exact_max=0)
    exact_set, approx_set = set(map(tuple, exact.tolist())), set(map(tuple, approx.tolist()))
    assert approx_set <= exact_set and len(approx_set) >= 0.95 * len(exact_set)
    brute = {(i, j) for i, j in combinations(range(len(points)), 2) if points[i] @ points[j] >= 0.9}
    assert exact_set == brute and len(brute) >= 600


@pytest.mark.slow
def test_a_validation_file_of_rewordings_is_caught_by_the_real_model(tmp_path: Path, model) -> None:
    from tunesmith.split import check_leakage

    # Unrelated requests (the generated filler of the other tests is one template: one topic to a model).
    train = write_rows(
        tmp_path / "train.jsonl", [row(i, q) for i, q in enumerate(UNRELATED[:6] + [g[0] for g in PARAPHRASES])]
    )
    val_rows = [row(100 + i, q) for i, q in enumerate(UNRELATED[6:])] + [
        row(200 + i, g[1]) for i, g in enumerate(PARAPHRASES)
    ]
    result = check_leakage(train, write_rows(tmp_path / "val.jsonl", val_rows), SplitConfig())
    assert result.leaked == len(PARAPHRASES)
    assert {e["id"] for e in result.nearest if e["leak"]} == {f"r{200 + i:04d}" for i in range(len(PARAPHRASES))}
    assert all(e["similarity"] >= SplitConfig().similarity for e in result.nearest if e["leak"])


def test_past_the_pair_budget_a_spanning_forest_keeps_the_same_groups(monkeypatch) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(1)
    points = np.repeat(rng.normal(size=(40, 16)), 25, axis=0) + 0.05 * rng.normal(size=(1000, 16))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    full = embed_mod.similar_pairs(points, 0.95)
    monkeypatch.setattr(embed_mod, "_MAX_PAIRS", 500)
    cut = embed_mod.similar_pairs(points, 0.95)
    assert len(full) > 5000 and len(cut) < 1000

    def groups(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(1000, 1000))
        return connected_components(graph, directed=False)[1]

    assert np.array_equal(groups(full), groups(cut))
