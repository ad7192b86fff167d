from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from tunesmith.train.batching import IGNORE_INDEX, collate, plan_batches


def skewed_lengths(n: int = 2000, seed: int = 0) -> list[int]:
    # Chat data is long-tailed: most examples short, a few near max_seq_len.
    rng = random.Random(seed)
    return [min(1024, int(rng.lognormvariate(5, 0.9)) + 8) for _ in range(n)]


def padding(plan: list[list[int]], lengths: list[int]) -> float:
    slots = sum(len(b) * max(lengths[i] for i in b) for b in plan)
    return 1 - sum(lengths) / slots


def test_every_example_once_and_deterministic() -> None:
    lengths = skewed_lengths()
    plan = plan_batches(lengths, micro_batch=8, seed=3, epoch=1)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 8 for b in plan)
    assert plan == plan_batches(lengths, micro_batch=8, seed=3, epoch=1)
    assert plan != plan_batches(lengths, micro_batch=8, seed=3, epoch=2)
    assert plan != plan_batches(lengths, micro_batch=8, seed=4, epoch=1)


def test_resume_continues_with_the_same_batches() -> None:
    lengths = skewed_lengths()
    full = plan_batches(lengths, micro_batch=8, seed=0, epoch=5)
    k = 37  # a run killed after 37 micro-batches of epoch 5 replans and skips them
    resumed = plan_batches(lengths, micro_batch=8, seed=0, epoch=5)[k:]
    assert resumed == full[k:]


def test_length_grouping_removes_most_padding() -> None:
    lengths = skewed_lengths()
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    naive = [order[i : i + 8] for i in range(0, len(order), 8)]
    grouped = plan_batches(lengths, micro_batch=8, seed=0, epoch=0)
    assert padding(naive, lengths) > 0.3
    assert padding(grouped, lengths) < 0.05


def test_batches_are_not_served_in_length_order() -> None:
    # Sorted batches in a row would make loss and memory a sawtooth; the batch order is shuffled.
    lengths = skewed_lengths()
    widths = [max(lengths[i] for i in b) for b in plan_batches(lengths, micro_batch=8, seed=0, epoch=0)]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    assert sum(a > b for a, b in zip(widths, widths[1:])) > len(widths) / 4


def test_token_budget_caps_padded_tokens() -> None:
    lengths = skewed_lengths()
    plan = plan_batches(lengths, micro_batch=8, max_tokens=4096, seed=0, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 4096 for b in plan)
    assert max(len(b) for b in plan) > 8  # short examples travel in bigger batches
    assert padding(plan, lengths) < 0.05


def test_token_budget_smaller_than_an_example_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_tokens_per_batch=100 .* longest example \\(300 tokens\\)"):
        plan_batches([50, 300, 20], micro_batch=2, max_tokens=100, seed=0, epoch=0)


def test_collate_pads_right_and_masks_by_position_not_by_id() -> None:
    eos = 2  # pad == eos, as for Phi-3 and many Llama fine-tunes: a trained EOS must survive
    a = SimpleNamespace(input_ids=[1, 5, 6, eos], labels=[IGNORE_INDEX, IGNORE_INDEX, 6, eos])
    b = {"input_ids": [1, 7], "labels": [IGNORE_INDEX, 7]}  # rows read back from JSONL are dicts
    batch = collate([a, b], pad_id=eos)
    assert batch["input_ids"].tolist() == [[1, 5, 6, eos], [1, 7, eos, eos]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 6, eos],
        [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="example 1 has 3 input_ids but 2 labels"):
        collate([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2, 3], "labels": [1, 2]}], pad_id=0)
