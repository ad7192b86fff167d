"""Exact and near-duplicate detection: what is grouped, what is not, how well the estimate tracks
the real Jaccard similarity, determinism across processes, and speed."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np

from tunesmith.data.dedup import _signatures, exact_key, find_duplicates, near_duplicate_groups
from tunesmith.data.schema import Conversation, Source

_WORD = re.compile(r"\w+")


def words(n: int, rng: random.Random) -> list[str]:
    return [f"w{rng.getrandbits(32):x}" for _ in range(n)]


def jaccard(a: str, b: str) -> float:
    def grams(t: str) -> set[tuple[str, ...]]:
        w = _WORD.findall(t.lower())
        return set(zip(w, w[1:], w[2:]))

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def conv(row: int, *turns: tuple[str, str]) -> Conversation:
    return Conversation([{"role": r, "content": c} for r, c in turns], Source("d.jsonl", row))


def test_exact_key_folds_case_and_spacing_only() -> None:
    a = [
        {"role": "user", "content": "How many  Orders?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"},
    ]
    b = [
        {"role": "user", "content": " how many orders? "},
        {"role": "assistant", "content": "select count(*)\nfrom orders;"},
    ]
    assert exact_key(a) == exact_key(b)
    assert exact_key(a) != exact_key([{"role": "system", "content": "How many Orders?"}, a[1]])  # roles count
    calls = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]
    other = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "g", "arguments": "{}"}}]}]
    assert exact_key(calls) != exact_key(other)


def test_find_duplicates_flags_later_rows_with_the_first_row_as_group() -> None:
    rng = random.Random(0)
    q, a = " ".join(words(30, rng)), " ".join(words(30, rng))
    rows = [
        conv(1, ("user", q), ("assistant", a)),
        conv(2, ("user", " ".join(words(30, rng))), ("assistant", " ".join(words(30, rng)))),
        conv(3, ("user", q.upper()), ("assistant", a)),  # exact copy, case changed
        conv(4, ("user", q.replace(" ", "  ")), ("assistant", a)),  # exact copy, spacing changed
        conv(5, ("user", q + " extra"), ("assistant", a)),  # near copy
    ]
    dups = find_duplicates(rows, 0.85)
    assert dups.exact == [[0, 2, 3]]
    assert dups.near == [[0, 2, 3, 4]]
    flagged = {rows[i].source.row: [(f.code, f.group) for f in fs] for i, fs in enumerate(dups.findings) if fs}
    assert flagged == {3: [("exact_duplicate", 1)], 4: [("exact_duplicate", 1)], 5: [("near_duplicate", 1)]}


def test_a_shared_system_prompt_is_not_duplication() -> None:
    rng = random.Random(1)
    schema = " ".join(words(300, rng))  # a long schema in every row dominates the text
    rows = [
        conv(i + 1, ("system", schema), ("user", " ".join(words(12, rng))), ("assistant", " ".join(words(12, rng))))
        for i in range(50)
    ]
    dups = find_duplicates(rows, 0.85)
    assert dups.exact == [] and dups.near == []


def test_planted_near_duplicates_are_found_and_nothing_else() -> None:
    rng = random.Random(2)
    texts = [" ".join(words(rng.randint(40, 80), rng)) for _ in range(2000)]
    planted = {}
    for i in range(0, 400, 4):  # one word changed near the end: J ≈ (n-3)/(n+1) > 0.9
        w = texts[i].split()
        w[-2] = "changed"
        texts[i + 1] = " ".join(w)
        planted[i] = i + 1
    groups = near_duplicate_groups(texts, 0.85)
    assert all(len(g) == 2 and planted.get(g[0]) == g[1] for g in groups), "only planted pairs may be grouped"
    assert len(groups) >= 0.95 * len(planted)  # J ≥ 0.9 against a 0.85 threshold: almost all found


def test_groups_are_transitive() -> None:
    rng = random.Random(3)
    base = words(60, rng)
    a = " ".join(base)
    b = " ".join(base[:-1] + ["x"])
    c = " ".join(base[:-1] + ["x", "y", "z"])  # close to b, further from a
    texts = [a, " ".join(words(60, rng)), b, c]
    assert jaccard(a, c) < jaccard(a, b)
    assert near_duplicate_groups(texts, 0.9) == [[0, 2, 3]]


def test_short_and_empty_texts() -> None:
    texts = ["Hi", "hi!", "", "  ", "Hello there", "hello   there", "Goodbye there"]
    assert near_duplicate_groups(texts, 0.85) == [[0, 1], [4, 5]]


def test_estimate_tracks_exact_jaccard() -> None:
    rng = random.Random(4)
    pairs, truth = [], []
    for _ in range(300):
        base = words(rng.randint(20, 120), rng)
        other = list(base)
        for _ in range(rng.randint(0, 6)):
            other[rng.randrange(len(other))] = "swap"
        pairs += [" ".join(base), " ".join(other)]
        truth.append(jaccard(pairs[-2], pairs[-1]))
    sig = _signatures(pairs)
    estimate = (sig[0::2] == sig[1::2]).mean(axis=1)
    error = estimate - np.array(truth)
    assert abs(error.mean()) < 0.01  # unbiased
    assert np.abs(error).mean() < 0.04  # ~ sqrt(J(1-J)/128) for a 128-slot MinHash
    assert np.std(truth) > 0.1  # the pairs span a range of similarities


def test_same_groups_in_another_process_with_another_hash_seed(tmp_path) -> None:
    rng = random.Random(5)
    texts = [" ".join(words(30, rng)) for _ in range(200)]
    texts += [t + " tail" for t in texts[:50]]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys; from tunesmith.data.dedup import near_duplicate_groups, _signatures;"
        "t = json.load(open(sys.argv[1])); print(json.dumps([near_duplicate_groups(t, 0.8), int(_signatures(t).sum())]))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "texts.json")],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    groups, _ = json.loads(runs[0])
    assert groups == near_duplicate_groups(texts, 0.8) and len(groups) == 50


def test_20k_texts_find_exactly_the_planted_near_duplicates() -> None:
    """The scale `data check` runs at; its speed is a benchmark figure (bench/dedup.py: ~1 s for 20k
    texts, 8.8x exact hashing, measured on the shared 2-core machine), not a wall-clock assertion."""
    rng = random.Random(6)
    vocab = words(30_000, rng)
    texts = [" ".join(rng.choices(vocab, k=rng.randint(15, 60))) for _ in range(20_000)]
    planted = rng.sample(range(len(texts)), 30)
    for i in planted:  # one word appended: Jaccard (n-2)/(n-1) of word 3-grams, 0.93 or more
        texts.append(texts[i] + " " + rng.choice(vocab))
    groups = near_duplicate_groups(texts, 0.85)
    assert sorted(map(sorted, groups)) == sorted([i, 20_000 + k] for k, i in enumerate(planted))
