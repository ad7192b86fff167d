"""`tunesmith train` uses the plan: plan.json in the run directory, `micro_batch: auto`, the tokens cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.test_recipe import run_config
from tunesmith.plan.training import choose_batching
from tunesmith.runs import PLAN_FILE
from tunesmith.train.recipe import train


@pytest.mark.slow  # ~20 s: one short training run
def test_auto_micro_batch_and_plan_json(tmp_path: Path):
    config = run_config(tmp_path, "auto", "train.micro_batch=auto", "train.epochs=1", "train.effective_batch=8")
    result = train(config)
    plan = json.loads((config.run_dir / PLAN_FILE).read_text())
    # A 2-layer model fits any micro-batch up to the effective batch; the plan picks that.
    assert result.micro_batch == plan["micro_batch"] == 8 and result.accumulation == plan["grad_accum"] == 1
    assert plan["memory"]["total"] == sum(v for k, v in plan["memory"].items() if k != "total") > 0
    assert plan["license"]["class"] == "permissive" and plan["batching"]["micro_batch"] == 8
    assert plan["parameters"] == result_parameters(config)


def test_max_tokens_per_batch_is_capped_to_what_fits(tmp_path: Path, monkeypatch):
    import tunesmith.plan.training as training

    config = run_config(tmp_path, "cap", "train.max_tokens_per_batch=100000")
    lengths = [40, 50, 60]
    roomy = choose_batching(config, lengths=lengths, trained_fraction=0.2, precision="fp32", world=1, sharded=False)
    assert roomy.max_tokens_per_batch == 100000 and not roomy.notes
    # 60 MB available: the tiny model fits, but not 100k tokens per forward.
    monkeypatch.setattr(training, "_device_budget", lambda: ("cpu", 60_000_000, "a small test budget"))
    capped = choose_batching(config, lengths=lengths, trained_fraction=0.2, precision="fp32", world=1, sharded=False)
    assert 60 <= capped.max_tokens_per_batch < 100000
    assert "capped" in capped.notes[0]


def result_parameters(config) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config.model.name_or_path)
    return sum(p.numel() for p in model.parameters())


def test_ranks_on_one_cpu_machine_plan_on_the_same_share(monkeypatch):
    import tunesmith.plan.training as training

    monkeypatch.setattr(training, "local_budget", lambda: ("cpu", 16_000_000_000, "CPU"))
    monkeypatch.setattr(training, "_mem_available", lambda: 9_000_000_000)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert training._device_budget()[1] == 9_000_000_000  # one process: what is free now
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training._device_budget()[1] == 8_000_000_000  # two: the total, halved, the same on both ranks
