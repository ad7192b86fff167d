"""`tunesmith plan` end to end on hand-written configs, and the plan `tunesmith train` uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app

CONFIGS = Path(__file__).parent / "configs"
KEYS = {"parameters", "trainable_parameters", "memory", "fits", "micro_batch", "grad_accum", "license", "model_kind"}


def model(tmp_path: Path, config: str, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    shutil.copy(CONFIGS / config, d / "config.json")
    return d


def test_plan_json_has_the_promised_keys(tmp_path: Path):
    d = model(tmp_path, "qwen2.5-7b.json", "Qwen2.5-7B-Instruct")
    result = CliRunner().invoke(
        app, ["plan", "--model", str(d), "--method", "qlora", "--gpu", "L4", "--seq-len", "1024", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert KEYS <= set(plan)
    assert plan["parameters"] == 7_615_616_512 and isinstance(plan["trainable_parameters"], int)
    assert plan["memory"]["total"] == sum(v for k, v in plan["memory"].items() if k != "total")
    assert plan["fits"] and plan["micro_batch"] >= 1 and plan["micro_batch"] * plan["grad_accum"] >= 16
    assert plan["memory"]["total"] <= 24e9
    assert plan["model_kind"] == "instruct"
    assert plan["license"] == {
        "id": "apache-2.0",
        "class": "permissive",
        "source": "name",
        "why": plan["license"]["why"],
    }


def test_plan_that_does_not_fit_exits_1_with_options(tmp_path: Path):
    d = model(tmp_path, "llama-3-8b.json", "Meta-Llama-3-8B")
    result = CliRunner().invoke(app, ["plan", "--model", str(d), "--method", "full", "--gpu-memory", "24GiB"])
    assert result.exit_code == 1
    assert "NO" in result.output and "--method qlora" in result.output


def test_time_and_cost_from_a_data_check_report(tmp_path: Path):
    d = model(tmp_path, "mistral-7b-v0.3.json", "Mistral-7B-Instruct-v0.3")
    report = tmp_path / "report.json"
    stats = {
        "encoded_rows": 1000,
        "tokens": {"total": 500_000, "max": 900, "min": 100, "median": 500, "p95": 800},
        "trained_tokens_after_cut": 200_000,
    }
    report.write_text(json.dumps({"stats": stats}))
    result = CliRunner().invoke(
        app, ["plan", "--model", str(d), "--gpu", "H100", "--data", str(report), "--epochs", "2", "--json"]
    )
    plan = json.loads(result.output)
    t = plan["time"]
    assert plan["seq_len"] == 900 and t["tokens_per_epoch"] == 500_000 and t["steps"] == 2 * 63
    # 4N + attention FLOPs per token (LoRA), 1e6 tokens, 989 TFLOP/s at 35%.
    flops = 1_000_000 * (4 * 7_248_023_552 + 3 * 2 * 32 * 900 * 4096)
    assert t["hours"] == pytest.approx(flops / (989e12 * 0.35) / 3600)
    assert t["cost"] == pytest.approx(t["hours"] * 2.90, abs=0.01)


def test_unreadable_model_and_bad_flags_exit_2(tmp_path: Path):
    assert CliRunner().invoke(app, ["plan", "--model", str(tmp_path / "nope")]).exit_code == 2
    d = model(tmp_path, "gpt2.json", "gpt2")
    assert CliRunner().invoke(app, ["plan", "--model", str(d), "--method", "half"]).exit_code == 2
    assert CliRunner().invoke(app, ["plan", "--model", str(d), "--gpu", "Z80"]).exit_code == 2
    assert CliRunner().invoke(app, ["plan", "--model", str(d), "--gpu-memory", "lots"]).exit_code == 2


def test_time_from_a_data_file_counts_tokens_with_the_models_tokenizer(tmp_path: Path):
    from tunesmith.models.tiny import build_tiny_model

    data = tmp_path / "data.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"what is {i} plus {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(40)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = build_tiny_model(
        tmp_path / "m",
        texts=[m["content"] for r in rows for m in r["messages"]] * 5,
        vocab_size=300,
        hidden_size=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate_size=64,
    )
    result = CliRunner().invoke(app, ["plan", "--model", str(d), "--gpu", "T4", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["data"]["rows"] == 40 and 0 < plan["data"]["trained_tokens"] < plan["data"]["tokens"]
    assert plan["time"]["tokens_per_epoch"] == plan["data"]["tokens"] and plan["seq_len"] == plan["data"]["max_tokens"]
    assert plan["weight_dtype"] == "float32" and plan["compute"] == "fp32"  # a T4 has no bf16
