"""Benchmark of the split stage: time and peak memory on generated conversations, next to the
recall the threshold gives on the labelled paraphrase set.

    python bench/split.py --rows 10000 [--rows 100000] [--thresholds]

Each size runs `split_file` twice: cold (embedding every row) and warm (the embedding cache in the
output directory answers). Then both neighbour searches on the same embeddings (exact blocked
product vs faiss IVF), which is how `embedding.EXACT_MAX_ROWS` was chosen. Peak memory is the
process's maximum RSS (it only grows, so run one size per process for a clean figure). Times on
a shared machine are under load: compare ratios within one run, not across runs; the CPU seconds
(all threads) are the cost of the work itself, and on an idle 2-core machine the wall time is
about half of them.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OPENERS = ["", "Please ", "Can you ", "Could you ", "I need to ", "Help me ", "Quick question: ", "Hi, "]
TASKS = [
    "show the total revenue of {x} in {y}",
    "count the orders placed by {x} during {y}",
    "list the products in {x} that cost more than {n} dollars",
    "find customers from {x} who signed up in {y}",
    "reset the password for the account of {x}",
    "refund order {n} placed by {x}",
    "explain why shipment {n} to {x} is late",
    "translate the phrase '{x}' into {y}",
    "write a {y} function that parses {x}",
    "summarise the report about {x} for {y}",
    "compare the prices of {x} and {z}",
    "describe the warranty terms for {x}",
    "cancel the subscription of {x} from {y}",
    "book a table for {n} people at {x}",
    "what is the capital of {x}",
]
XS = "Berlin Lisbon Oslo Kyoto Lima Accra Quito Perth Austin Turin Ghent Bergen Malmo Porto Cork Hanoi".split()
XS += "laptops garden tools coffee beans running shoes printers tents kayaks violins".split()
YS = "January February March April May June 2021 2022 2023 2024 Python Rust Go French Spanish German".split()


def generate(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = rng.choice(TASKS).format(x=rng.choice(XS), y=rng.choice(YS), z=rng.choice(XS), n=rng.randrange(1, 10**5))
        question = (rng.choice(OPENERS) + task).strip() + rng.choice(["?", ".", "", " please."])
        rows.append(
            {
                "id": f"b{i:06d}",
                "messages": [
                    {"role": "system", "content": "You are the shop's assistant."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"Here is the answer to request {i}."},
                ],
                "category": task.split()[0],
            }
        )
    return rows


def stand_in_embed(texts, embedder, *, cache=None, batch_size=64, progress=False):
    """Unit vectors from the sum of a fixed random vector per word: texts sharing words are close,
    like a static embedding. Only for timing the rest of the stage at sizes the model is too slow for."""
    import numpy as np

    rng = np.random.default_rng(0)
    vocab: dict[str, np.ndarray] = {}
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            if word not in vocab:
                vocab[word] = rng.normal(size=384).astype(np.float32)
            out[i] += vocab[word]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def labelled_figures(similarity: float, thresholds: list[float]) -> list:
    from tunesmith.config import SplitConfig
    from tunesmith.split.embedding import embed
    from tunesmith.split.paraphrases import labelled_pairs, measure

    texts, _, _ = labelled_pairs()
    return measure(embed(texts, SplitConfig().embedder), sorted({similarity, *thresholds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, action="append", help="rows to generate (repeatable); default 10000")
    ap.add_argument("--thresholds", action="store_true", help="print the labelled set's precision/recall table")
    ap.add_argument("--stratify-by", default="auto")
    ap.add_argument(
        "--stand-in-embeddings",
        action="store_true",
        help="replace the model by a bag-of-words random projection: times everything but its forward pass",
    )
    args = ap.parse_args()
    if args.stand_in_embeddings:
        import tunesmith.split as split_module

        split_module.embed = stand_in_embed

    from tunesmith.config import SplitConfig
    from tunesmith.runs import write_jsonl
    from tunesmith.split import split_file
    from tunesmith.split.embedding import EXACT_MAX_ROWS, _faiss_pairs, similar_pairs

    config = SplitConfig(stratify_by=args.stratify_by)
    table = labelled_figures(config.similarity, [0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9] if args.thresholds else [])
    at = next(r for r in table if r.threshold == config.similarity)
    recall = (
        f"labelled set at {config.similarity:g}: pairs P {at.precision:.3f} R {at.recall:.3f}, "
        f"groups P {at.group_precision:.3f} R {at.group_recall:.3f}"
    )
    if args.thresholds:
        print("threshold  pair precision  pair recall  group precision  group recall  true/false pair links")
        for r in table:
            print(
                f"{r.threshold:9.2f}  {r.precision:14.3f}  {r.recall:11.3f}  {r.group_precision:15.3f}  "
                f"{r.group_recall:12.3f}  {r.true_links}/{r.false_links}"
            )
    for n in args.rows or [10_000]:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.jsonl"
            write_jsonl(src, generate(n))
            t0, c0 = time.perf_counter(), time.process_time()
            result = split_file(src, Path(tmp) / "out", config)
            cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
            t0 = time.perf_counter()
            split_file(src, Path(tmp) / "out", config)
            warm = time.perf_counter() - t0
            from tunesmith.split import _read, _texts
            from tunesmith.split.embedding import cache_path, embed

            convs = [r.conversation for r in _read(src, "auto")]
            texts = _texts(convs, "user")
            if args.stand_in_embeddings:
                emb = stand_in_embed(texts, None)
            else:
                emb = embed(texts, config.embedder, cache=cache_path(Path(tmp) / "out", config.embedder))
            t0 = time.perf_counter()
            # Above EXACT_MAX_ROWS the exact product is what the stage avoids (n^2: ~6 min at 100k).
            exact = similar_pairs(emb, config.similarity, exact_max=10**9) if n <= EXACT_MAX_ROWS else None
            t_exact = time.perf_counter() - t0
            t0 = time.perf_counter()
            approx = _faiss_pairs(emb, config.similarity)
            t_faiss = time.perf_counter() - t0
            found = len(set(map(tuple, approx.tolist())) & set(map(tuple, exact.tolist()))) if exact is not None else 0
            c = result.counts
            print(
                json.dumps(
                    {
                        "rows": n,
                        "cold_s": round(cold, 1),
                        # CPU seconds of all threads: what the work costs, whatever else runs.
                        "cold_cpu_s": round(cold_cpu, 1),
                        "warm_s": round(warm, 1),
                        "rows_per_s_cold": round(n / cold),
                        "peak_rss_gb": round(peak_gb(), 2),
                        "split": [c["train"], c["val"], c["test"]],
                        "groups": result.groups,
                        "largest_group": result.largest_group,
                        "leaks": result.leaks,
                        "pairs_exact": len(exact) if exact is not None else None,
                        "exact_s": round(t_exact, 2) if exact is not None else None,
                        "faiss_s": round(t_faiss, 2),
                        "faiss_pair_recall": round(found / max(1, len(exact)), 4) if exact is not None else None,
                        "pairs_faiss": len(approx),
                    }
                )
            )
            print(f"  {n} rows: {cold:.1f} s cold, {warm:.1f} s warm, peak {peak_gb():.2f} GB; {recall}")


if __name__ == "__main__":
    main()
