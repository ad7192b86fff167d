"""Near-duplicate detection speed, as a ratio against exact-duplicate hashing of the same texts.

    .venv/bin/python bench/dedup.py                 # 20k texts of 15-60 words
    .venv/bin/python bench/dedup.py --texts 100000

Prints seconds for both and their ratio (never pass/fail: the machines are shared, so only a ratio
from one run counts). The baseline is the cheapest thing a dedup pass can do: lowercase, hash, group
(`exact_duplicate_groups`); MinHash + LSH over word 3-grams costs a small multiple of it.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from tunesmith.data.dedup import exact_duplicate_groups, near_duplicate_groups


def texts(n: int, seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{rng.getrandbits(32):x}" for _ in range(30_000)]
    return [" ".join(rng.choices(vocab, k=rng.randint(15, 60))) for _ in range(n)]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = texts(args.texts)
    exact = best_of(
        args.repeats,
        lambda: exact_duplicate_groups([hashlib.blake2b(t.lower().encode(), digest_size=16).hexdigest() for t in data]),
    )
    near = best_of(args.repeats, lambda: near_duplicate_groups(data, args.threshold))
    print(f"{args.texts:,} texts: exact hashing {exact:.3f} s, near duplicates (MinHash+LSH) {near:.3f} s")
    print(f"ratio near/exact: {near / exact:.1f}x; near duplicates per second: {args.texts / near:,.0f} texts")


if __name__ == "__main__":
    main()
