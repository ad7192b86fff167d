"""advise: each rule on a case where it alone decides, and the cost at scale."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.plan.advise import Task, advise, instruction_cost

ENOUGH = dict(examples=2000, requirements_change="rarely")


def rules(task: Task) -> list[str]:
    return [r.rule for r in advise(task).reasons]


def test_r1_fresh_facts_means_rag():
    a = advise(Task(fresh_facts=True, **ENOUGH))
    assert a.recommendation == ["rag"] and rules(Task(fresh_facts=True, **ENOUGH)) == ["R1"]


def test_r2_citations_mean_rag():
    assert advise(Task(citations=True, **ENOUGH)).recommendation == ["rag"]


def test_r3_changing_requirements_mean_prompting():
    a = advise(Task(examples=2000, requirements_change="weekly", format_consistency="strict"))
    assert a.recommendation == ["prompting"]
    assert "R5" not in [r.rule for r in a.reasons]  # a strict format does not win over weekly changes


def test_r4_few_examples_mean_in_context_examples():
    a = advise(Task(examples=30, format_consistency="strict"))
    assert a.recommendation == ["in-context examples"]
    assert rules(Task(examples=30, format_consistency="strict")) == ["R4"]


def test_r5_strict_format_with_enough_examples_means_fine_tuning():
    assert advise(Task(format_consistency="strict", **ENOUGH)).recommendation == ["fine-tuning"]


def test_r6_cost_at_scale():
    task = Task(instruction_tokens=3000, requests_per_month=1_000_000, price_per_million=0.5, **ENOUGH)
    assert instruction_cost(task) == 1500.0  # 3000 × 1e6 × 0.5 / 1e6
    a = advise(task)
    assert (
        a.recommendation == ["fine-tuning"]
        and a.monthly_instruction_cost == 1500.0
        and a.yearly_instruction_cost == 18000.0
    )
    cheap = Task(instruction_tokens=3000, requests_per_month=1000, price_per_million=0.5, **ENOUGH)
    assert advise(cheap).recommendation == ["prompting"]  # $1.50/month: not worth a fine-tune


def test_rag_and_fine_tuning_together():
    a = advise(Task(fresh_facts=True, format_consistency="strict", **ENOUGH))
    assert a.recommendation == ["rag", "fine-tuning"]


def test_r7_default_is_prompting():
    assert advise(Task(**ENOUGH)).recommendation == ["prompting"] and rules(Task(**ENOUGH)) == ["R7"]


def test_cli_flags_and_json():
    result = CliRunner().invoke(
        app,
        [
            "advise",
            "--examples",
            "5000",
            "--format",
            "strict",
            "--requirements-change",
            "rarely",
            "--no-fresh-facts",
            "--no-citations",
            "--requests-per-month",
            "100",
            "--instruction-tokens",
            "10",
            "--price-per-million",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recommendation"] == ["fine-tuning"]
    bad = CliRunner().invoke(app, ["advise", "--requirements-change", "hourly", "--json"])
    assert bad.exit_code == 2
