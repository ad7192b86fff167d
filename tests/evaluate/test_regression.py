"""The regression check on a tiny model: the base's numbers through a peft model's disabled
adapters, a damaged model flagged, an unchanged one not, the judge's sign test."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.config import EvalConfig, JudgeConfig, RegressionConfig
from tunesmith.data.schema import DataError
from tunesmith.data.template import load_tokenizer
from tunesmith.evaluate.regression import DEFAULT_PROMPTS, load_prompts, reference_losses, regression_check, verdict
from tunesmith.examples.text2sql import example_texts
from tunesmith.models.load import load_model
from tunesmith.models.tiny import build_tiny_model

from .local_server import running
from .test_judge import ScriptedJudge

pytestmark = pytest.mark.slow
PER_CATEGORY = 3  # prompts per category in the tests' subset: 12 forward passes per model, not 50


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    path = build_tiny_model(root / "model", preset="tiny", texts=example_texts())
    return path, load_tokenizer(path)


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> EvalConfig:
    """An eval config whose regression prompts are the first PER_CATEGORY of each shipped category."""
    rows, seen = [], {}
    for line in DEFAULT_PROMPTS.read_text().splitlines():
        row = json.loads(line)
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if seen[row["category"]] <= PER_CATEGORY:
            rows.append(line)
    path = tmp_path_factory.mktemp("prompts") / "subset.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return EvalConfig(regression=RegressionConfig(prompts=str(path)))


def _damaged(path):
    """The same model with its output embedding scaled up: sharper, wrong predictions everywhere."""
    model = load_model(path, dtype="float32")
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def test_shipped_prompts_have_references_in_four_categories():
    prompts = load_prompts()
    assert len(prompts) == 50
    assert {p.metadata["category"] for p in prompts} == {"arithmetic", "facts", "writing", "format"}
    assert all(p.messages[-1]["role"] == "assistant" and p.messages[-1]["content"] for p in prompts)
    assert len({p.id for p in prompts}) == 50
    assert DEFAULT_PROMPTS.suffix == ".jsonl"


def test_bad_prompts_file_names_its_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
    path.write_text(path.read_text() + "\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    with pytest.raises(DataError, match=":2"):
        load_prompts(path)
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_unchanged_model_is_not_flagged_and_damaged_one_is(tiny, subset):
    path, tokenizer = tiny
    n = 4 * PER_CATEGORY
    base = load_model(path, dtype="float32")
    same = regression_check(base, tokenizer, subset, base=base)
    assert same["loss_change"] == 0 and same["p_value"] == 1.0 and not same["flagged"]
    assert same["judge"] is None

    damaged = regression_check(_damaged(path), tokenizer, subset, base=base)
    assert damaged["base_loss"] == pytest.approx(same["base_loss"])
    assert damaged["loss_change"] > subset.regression.max_loss_increase and damaged["p_value"] < 0.05
    assert damaged["flagged"] and "catastrophic forgetting" in damaged["findings"][0]
    assert set(damaged["by_category"]) == {"arithmetic", "facts", "writing", "format"}
    assert damaged["n"] == sum(c["n"] for c in damaged["by_category"].values()) == n
    worst = [w["tuned_loss"] - w["base_loss"] for w in damaged["worst"]]
    assert len(worst) == 5 and worst == sorted(worst, reverse=True)
    json.dumps(damaged)  # JSON-able as it is

    lenient_config = subset.model_copy(deep=True)
    lenient_config.regression.max_loss_increase = 1e6
    lenient = regression_check(_damaged(path), tokenizer, lenient_config, base=base)
    assert lenient["loss_change"] == pytest.approx(damaged["loss_change"]) and not lenient["flagged"]


def test_peft_model_base_numbers_come_from_disabled_adapters(tiny, subset):
    path, tokenizer = tiny
    plain = reference_losses(load_model(path, dtype="float32"), tokenizer, load_prompts(subset.regression.prompts))
    peft = get_peft_model(load_model(path, dtype="float32"), LoraConfig(r=4, target_modules="all-linear"))
    fresh = regression_check(peft, tokenizer, subset)  # B = 0: the adapter changes nothing yet
    assert fresh["loss_change"] == pytest.approx(0, abs=1e-6)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = regression_check(peft, tokenizer, subset)
    assert moved["base_loss"] == pytest.approx(sum(loss for loss, _ in plain) / sum(n for _, n in plain), rel=1e-5)
    assert moved["tuned_loss"] != pytest.approx(moved["base_loss"], rel=1e-3)
    with pytest.raises(ValueError, match="base"):
        regression_check(load_model(path, dtype="float32"), tokenizer, subset)


def test_judge_sign_test_flags_a_tuned_model_the_judge_keeps_rejecting(tiny, subset):
    path, tokenizer = tiny
    n = 4 * PER_CATEGORY
    base = load_model(path, dtype="float32")
    tuned = load_model(path, dtype="float32")  # the same weights: the loss sees no change
    script = ScriptedJudge()

    def generate(model, prompts):  # the judge prefers answers that say GOOD: here the base's
        return ["GOOD answer" if model is base else "weak answer" for _ in prompts]

    with running(script.app) as url:
        config = subset.model_copy(update={"judge": JudgeConfig(url=f"{url}/v1", model="scripted", concurrency=8)})
        result = regression_check(tuned, tokenizer, config, base=base, generate=generate)
    judge = result["judge"]
    assert (judge["wins"], judge["losses"], judge["ties"]) == (0, n, 0)
    assert judge["sign_test_p"] == pytest.approx(0.5**n)
    assert len(script.requests) == 2 * n  # every prompt, both orders
    assert result["loss_change"] == 0 and result["flagged"]  # the loss alone saw nothing; the judge did
    assert "judge prefers the base" in result["findings"][0]


def test_the_verdict_says_a_significant_increase_below_the_threshold_as_what_it_is():
    result = {"flagged": False, "loss_change": 0.118, "p_value": 0.009, "max_loss_increase": 0.2}
    assert verdict(result) == "a significant increase (p=0.009), below the +20% threshold for catastrophic forgetting"
    assert verdict({**result, "p_value": 0.38}) == "no sign of forgetting"
    assert verdict({**result, "loss_change": -0.03, "p_value": 0.001}) == "no sign of forgetting"
    assert verdict({**result, "flagged": True}) == "possible catastrophic forgetting"
