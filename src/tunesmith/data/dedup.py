"""Exact and near-duplicate detection.

Exact duplicates compare whole conversations (roles, contents and tool calls) after folding case
and whitespace. Near duplicates are found with MinHash + LSH over word 3-grams of the user and
assistant text, in numpy with no Python work per word, so 100k conversations take seconds:

* words are runs of `[a-z0-9_]` or non-ASCII bytes of the lower-cased UTF-8 text; each is hashed
  with a polynomial hash computed from prefix sums (stable across processes, unlike `hash()`);
* the signature is a one-permutation MinHash (Li, Owen & Zhang 2012): a 64-bit hash per 3-gram,
  whose top bits pick one of `NUM_PERM` bins and whose low 32 bits compete for that bin's
  minimum. Each 3-gram enters as `COPIES` independently hashed copies (the copies' Jaccard
  similarity is the 3-grams'), so a short text leaves few bins empty; an empty bin borrows from
  another bin chosen by a hash of (bin, attempt), the same for every text ("optimal
  densification", Shrivastava 2017). That is `COPIES` hashes per 3-gram instead of `NUM_PERM`,
  for an estimate as good as a classic 128-permutation MinHash (tests/data/test_dedup.py);
* LSH bands propose candidate pairs, tuned so that a pair right at the threshold becomes a
  candidate 99% of the time; a candidate counts when its *estimated* Jaccard (the share of
  equal signature slots) reaches the threshold; groups are the connected components (union-find)
  of the counted pairs.

System messages are left out of the near-duplicate text on purpose: a dataset often shares one
system prompt (or one database schema) across every row, and that is not duplication.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tunesmith.data.schema import Conversation, Finding

NUM_PERM = 128  # signature slots: the estimate's std at J=0.85 is sqrt(.85*.15/128) ≈ 0.03
SHINGLE = 3  # words per shingle, as `DataConfig.near_dup_threshold` documents
COPIES = 4  # each 3-gram enters as this many independently hashed copies (see _signatures)
SEED = 20240607  # fixed: the same data gives the same groups in every process
_CHUNK_BYTES = 1 << 22  # text bytes hashed per numpy step: ~6 uint64 arrays that long = 200 MiB peak
_EMPTY = np.uint32(0xFFFFFFFF)
_P = np.uint64(0x9E3779B97F4A7C15)  # odd, hence invertible modulo 2^64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[list(b"0123456789abcdefghijklmnopqrstuvwxyz_")] = True
_WORD_BYTE[0x80:] = True  # bytes of non-ASCII characters: letters in most scripts


def _normal(text: Any) -> str:
    return " ".join(text.lower().split()) if isinstance(text, str) else ""


def exact_key(messages: Sequence[dict[str, Any]], system_memo: dict[str, str] | None = None) -> str:
    """Roles, contents and tool calls with case and whitespace folded: equal keys, same example.
    `system_memo` caches folded system prompts, which most datasets repeat on every row (folding
    a 700-character schema prompt costs more than the rest of the row)."""
    parts = []
    for m in messages:
        content = m.get("content")
        if system_memo is not None and m.get("role") == "system" and isinstance(content, str):
            folded = system_memo.get(content)
            if folded is None:
                folded = system_memo[content] = _normal(content)
        else:
            folded = _normal(content)
        part = f"{_normal(m.get('role'))}\x1f{folded}"
        if m.get("tool_calls"):
            part += "\x1f" + json.dumps(m["tool_calls"], sort_keys=True, ensure_ascii=False)
        parts.append(part)
    return "\x1e".join(parts)


def near_dup_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text near-duplicate detection compares: every non-system message's content."""
    return "\n".join(m["content"] for m in messages if m.get("role") != "system" and isinstance(m.get("content"), str))


def exact_duplicate_groups(keys: Sequence[str]) -> list[list[int]]:
    """Indices sharing a key, groups of two or more, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits (wraps mod 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.multiply.accumulate(out, out=out)


def _word_hashes(encoded: Sequence[bytes], powers: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every word of the lower-cased UTF-8 texts, in order, and the index of the
    text it is in. `powers` are P^-i and P^i for i up to the chunk's length in bytes.

    The hash of bytes c_0..c_m at offset s is sum(c_j * P^-(s+j)) * P^s = sum(c_j * P^-j): a
    difference of two prefix sums, so every word of the chunk is hashed in a few array passes."""
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1)
    buf = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)  # a space ends the last word too
    edge = np.diff(_WORD_BYTE[buf].view(np.int8), prepend=np.int8(0))
    starts, stops = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
    np.cumsum((buf + np.uint64(1)) * powers[0][: len(buf)], out=prefix[1:])
    words = (prefix[stops] - prefix[starts]) * powers[1][starts]
    return _splitmix64(words), np.searchsorted(ends, starts, side="right")


def _shingle_hashes(word: np.ndarray, text: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every word 3-gram and its text; a text of one or two words is one shingle."""
    n = len(word)
    pad = np.concatenate([word, np.zeros(SHINGLE - 1, np.uint64)])
    pad_text = np.concatenate([text, np.full(SHINGLE - 1, -1)])
    mixed = word.copy()
    for k in range(1, SHINGLE):
        same = pad_text[k : k + n] == text  # never mix in a word of the next text
        mixed = _splitmix64(mixed) + np.where(same, pad[k : k + n], np.uint64(0))
    words_in_text = np.bincount(text, minlength=n_texts)
    first_of_text = np.concatenate([[True], text[1:] != text[:-1]]) if n else np.zeros(0, bool)
    keep = same | (first_of_text & (words_in_text[text] < SHINGLE))
    return _splitmix64(mixed[keep]), text[keep]


@functools.lru_cache(maxsize=4)
def _densify_table(num_perm: int) -> np.ndarray:
    """(attempts, num_perm): the bin an empty bin borrows from at each attempt."""
    attempts = 20 * num_perm  # a row with one full bin needs ~num_perm * ln(num_perm) attempts
    cells = np.arange(attempts * num_perm, dtype=np.uint64)
    return (_splitmix64(cells + np.uint64(SEED)) % np.uint64(num_perm)).astype(np.int64).reshape(attempts, num_perm)


def _densify(sig: np.ndarray) -> None:
    """Fill empty bins in place from another bin of the same row; the bin tried at each attempt
    depends only on (bin, attempt), so rows with the same content fill the same way. A bin still
    empty after the last attempt (odds ~e^-20 each) takes the row's first full bin."""
    num_perm = sig.shape[1]
    table = _densify_table(num_perm)
    flat, had_value = sig.reshape(-1), (sig != _EMPTY).reshape(-1)
    source = flat.copy()
    has_any = (sig != _EMPTY).any(axis=1)
    cell = np.flatnonzero(~had_value & np.repeat(has_any, num_perm))
    row_start, col = cell - cell % num_perm, cell % num_perm
    for attempt in range(len(table)):
        if not len(cell):
            return
        tried = row_start + table[attempt, col]
        hit = had_value[tried]
        flat[cell[hit]] = source[tried[hit]]
        miss = ~hit
        cell, row_start, col = cell[miss], row_start[miss], col[miss]
    first_full = had_value.reshape(sig.shape).argmax(axis=1)
    flat[cell] = source[row_start + first_full[row_start // num_perm]]


def _signatures(texts: Sequence[str], num_perm: int = NUM_PERM) -> np.ndarray:
    """(len(texts), num_perm) uint32 one-permutation MinHash signatures of word 3-grams, densified;
    a text without words keeps an all-empty row. The hashes depend on the words alone, so
    signatures from different calls (and processes) compare."""
    if num_perm & (num_perm - 1):
        raise ValueError(f"num_perm must be a power of two, got {num_perm}")
    sig = np.full((len(texts), num_perm), _EMPTY, dtype=np.uint32)
    shift = np.uint64(64 - num_perm.bit_length() + 1)
    encoded = [t.lower().encode() for t in texts]
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1)
    chunks, lo = [], 0
    while lo < len(texts):  # as many texts as fit in _CHUNK_BYTES, at least one
        start = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, start + _CHUNK_BYTES, side="right")))
        chunks.append((lo, hi, int(ends[hi - 1] - start)))
        lo = hi
    longest = max((size for _, _, size in chunks), default=0) + 1
    powers = (_powers(_P_INV, longest), _powers(_P, longest))
    for lo, hi, _ in chunks:
        word, text = _word_hashes(encoded[lo:hi], powers)
        shingle, text = _shingle_hashes(word, text, hi - lo)
        for copy in range(COPIES):
            h = _splitmix64(shingle ^ np.uint64(copy * int(_P) % 2**64)) if copy else shingle
            slot = (text + lo) * num_perm + (h >> shift).astype(np.int64)
            np.minimum.at(sig.reshape(-1), slot, (h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    _densify(sig)
    return sig


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the most rows (the fewest false candidates) for which a pair of
    Jaccard `threshold` shares a bucket in some band with probability >= `recall`."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _band_pairs(sig: np.ndarray, rows: Sequence[int], bands: int, r: int) -> np.ndarray:
    """Candidate pairs (i, j), i < j, that share a band bucket: each bucket's members joined to its
    first member and to their neighbour, O(members) instead of O(members^2) per bucket."""
    pairs = []
    rows = np.asarray(rows)
    weights = _splitmix64(np.arange(1, r + 1, dtype=np.uint64))
    for band in range(bands):
        with np.errstate(over="ignore"):
            key = _splitmix64((sig[rows, band * r : (band + 1) * r].astype(np.uint64) * weights).sum(axis=1))
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        same_as_prev = np.concatenate([[False], sorted_key[1:] == sorted_key[:-1]])
        if not same_as_prev.any():
            continue
        run_start = np.maximum.accumulate(np.where(same_as_prev, 0, np.arange(len(order))))
        members = np.flatnonzero(same_as_prev)
        pairs.append(np.stack([order[run_start[members]], order[members]], axis=1))
        pairs.append(np.stack([order[members - 1], order[members]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    found = np.sort(rows[np.concatenate(pairs)], axis=1)
    found = found[found[:, 0] != found[:, 1]]
    # One int64 per pair, sorted and deduplicated: ~10x faster than np.unique(axis=0).
    width = int(rows.max()) + 1
    key = np.sort(found[:, 0] * width + found[:, 1])
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    return np.stack(np.divmod(key, width), axis=1)


def near_duplicate_groups(
    texts: Sequence[str], threshold: float, *, num_perm: int = NUM_PERM, signatures: np.ndarray | None = None
) -> list[list[int]]:
    """Groups (two or more indices, sorted; groups in order of their first index) of texts whose
    estimated Jaccard similarity of word 3-grams reaches `threshold`, joined transitively."""
    sig = _signatures(texts, num_perm) if signatures is None else signatures
    rows = np.flatnonzero((sig != _EMPTY).any(axis=1))  # texts without words never match
    if len(rows) < 2:
        return []
    bands, r = lsh_bands(threshold, sig.shape[1])
    pairs = _band_pairs(sig, rows, bands, r)
    similar = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), 1 << 16):
        p = pairs[lo : lo + (1 << 16)]
        similar[lo : lo + len(p)] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1) >= threshold
    pairs = pairs[similar]
    n = len(texts)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members = np.flatnonzero(np.bincount(label)[label] > 1)
    members = members[np.argsort(label[members], kind="stable")]  # by group, ascending within each
    cuts = np.flatnonzero(np.diff(label[members])) + 1
    return sorted(g.tolist() for g in np.split(members, cuts)) if len(members) else []


@dataclass
class Duplicates:
    """Duplicate groups of a list of conversations, as indices into that list."""

    exact: list[list[int]]
    near: list[list[int]]
    findings: list[list[Finding]]  # per conversation, in order


def find_duplicates(conversations: Sequence[Conversation], threshold: float) -> Duplicates:
    """`exact_duplicate` on every row after the first of its exact group, and `near_duplicate`
    on every later row of a near group that is not an exact copy of an earlier member. A near
    group made only of exact copies adds nothing: its rows already carry `exact_duplicate`.
    Every finding's `group` is the row number of the group's first member."""
    memo: dict[str, str] = {}
    keys = [exact_key(c.messages, memo) for c in conversations]
    exact = exact_duplicate_groups(keys)
    near = near_duplicate_groups([near_dup_text(c.messages) for c in conversations], threshold)
    findings: list[list[Finding]] = [[] for _ in conversations]
    for group in exact:
        first = conversations[group[0]].source
        for i in group[1:]:
            message = f"the same conversation as row {first.row} (ignoring case and spacing)"
            findings[i].append(Finding("exact_duplicate", conversations[i].source, message, group=first.row))
    for group in near:
        first = conversations[group[0]].source
        seen = {keys[group[0]]}
        for i in group[1:]:
            if keys[i] in seen:
                continue
            seen.add(keys[i])
            message = f"nearly the same as row {first.row}: one of {len(group)} rows with estimated word 3-gram Jaccard >= {threshold:g}"
            findings[i].append(Finding("near_duplicate", conversations[i].source, message, group=first.row))
    return Duplicates(exact, near, findings)
