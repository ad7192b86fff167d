"""`evaluate_run` / `tunesmith eval RUN_DIR`: files, summary keys, base vs tuned, the tuned model's loading."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config import Config, ConfigError, dump_config
from tunesmith.evaluate import runner as runner_module
from tunesmith.evaluate.generate import Generation, generate, load_for_generation
from tunesmith.evaluate.runner import evaluate_run, headline, print_examples
from tunesmith.examples.text2sql import generate_conversations, write_database
from tunesmith.models.tiny import build_tiny_model
from tunesmith.runs import CONFIG_FILE, DATA_DIR, EVAL_DIR, EVAL_SUMMARY_FILE, FINAL_DIR, SPLIT_DIR, write_jsonl

N = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as train + split leave it: config.yaml, final/ (a full model), data/split/test.jsonl."""
    root = tmp_path_factory.mktemp("run")
    db = write_database(root / "shop.sqlite")
    rows = [r for r in generate_conversations(db, n=40, flaw_rate=0.0) if isinstance(r, dict)][:N]
    texts = [m["content"] for r in rows for m in r["messages"]] * 5
    base = build_tiny_model(root / "base", vocab_size=300, texts=texts, seed=1)
    run = root / "runs" / "demo"
    build_tiny_model(run / FINAL_DIR, vocab_size=300, texts=texts, seed=2)  # "tuned": other weights
    write_jsonl(run / DATA_DIR / SPLIT_DIR / "test.jsonl", rows)
    config = Config.model_validate(
        {
            "name": "demo",
            "runs_dir": str(root / "runs"),
            "model": {"name_or_path": str(base)},
            "data": {"path": str(run / DATA_DIR / SPLIT_DIR / "test.jsonl")},
            "eval": {"suites": ["sql", "exact"], "sql": {"db": str(db)}, "generation": {"max_new_tokens": 8}},
        }
    )
    (run / CONFIG_FILE).write_text(dump_config(config))
    return run


@pytest.mark.slow  # first user of the module fixture: builds tiny models (10-15 s measured under load)
def test_files_and_summary(run_dir: Path):
    result = evaluate_run(run_dir, console=Console(file=io.StringIO()), progress=False)
    summary = json.loads((run_dir / EVAL_DIR / EVAL_SUMMARY_FILE).read_text())
    assert summary == result.summary
    assert summary["split"] == "test" and summary["n"] == N and summary["suites"] == ["sql", "exact"]
    assert set(summary["models"]) == {"tuned", "base"}
    for name in ("tuned", "base"):
        model = summary["models"][name]
        assert set(model) == {"path", "unstopped", "scores"}
        assert set(model["scores"]["sql"]) >= {"n", "execution_success_rate", "execution_accuracy", "errors"}
        assert model["scores"]["exact"]["n"] == N
        assert model["unstopped"] == N  # random weights never stop...
        rows = [json.loads(line) for line in (run_dir / EVAL_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == N
        row = rows[0]
        assert set(row) == {"id", "prompt", "output", "reference", "stopped", "new_tokens", "scores", "metadata"}
        assert row["prompt"][-1]["role"] == "user" and row["reference"].startswith("SELECT")
        assert row["metadata"]["template"]  # the split row's other fields come along
        assert set(row["scores"]) == {"sql", "exact"}
    assert [f["code"] for f in summary["findings"]] == ["unstopped_outputs", "unstopped_outputs"]  # ...and say so
    tuned = [json.loads(line)["output"] for line in (run_dir / EVAL_DIR / "tuned.jsonl").read_text().splitlines()]
    base = [json.loads(line)["output"] for line in (run_dir / EVAL_DIR / "base.jsonl").read_text().splitlines()]
    assert tuned != base  # two models were really run
    regression = summary["regression"]  # on by default: general prompts, base vs tuned loss
    assert regression["n"] >= 40 and regression["base_loss"] > 0 and regression["tuned_loss"] > 0
    assert regression["base_loss"] != regression["tuned_loss"]  # two different models scored


def test_scores_and_side_by_side_print(run_dir: Path, monkeypatch):
    # Scripted answers: the tuned model writes the reference query, the base model prose.
    examples = runner_module.read_examples(run_dir / DATA_DIR / SPLIT_DIR / "test.jsonl")
    references = {json.dumps(e.prompt): e.reference for e in examples}
    calls = []

    def scripted(model, tokenizer, prompts, config, **kwargs):
        calls.append(kwargs["description"])
        if kwargs["description"] == "tuned":
            return [Generation(references[json.dumps(p)], True, 9) for p in prompts]
        return [Generation("I think you should look at the orders table.", True, 11) for _ in prompts]

    monkeypatch.setattr(runner_module, "generate", scripted)
    console = Console(record=True, width=120)
    result = evaluate_run(run_dir, limit=3, console=console, progress=False)
    assert calls == ["tuned", "base"]
    sql = {name: result.summary["models"][name]["scores"]["sql"] for name in ("tuned", "base")}
    assert sql["tuned"]["execution_accuracy"] == 1.0 and sql["tuned"]["execution_success_rate"] == 1.0
    assert sql["base"]["execution_success_rate"] == 0.0 and sql["base"]["errors"] == {"execution_error": 3}
    assert result.summary["n"] == 3 and result.summary["findings"] == []
    text = console.export_text()
    assert "execution_accuracy" in text and "+1.000" in text
    print_examples(result, console, k=2)
    assert "look at the orders table" in console.export_text()
    assert headline(result.summary) == [
        "sql execution_success_rate: base 0/3 (0%) -> tuned 3/3 (100%)",
        "sql execution_accuracy: base 0/3 (0%) -> tuned 3/3 (100%)",
        "exact accuracy: base 0/3 (0%) -> tuned 3/3 (100%)",
    ]


def test_no_base_and_cli(run_dir: Path):
    out = CliRunner().invoke(app, ["eval", str(run_dir), "--no-base", "--limit", "2", "eval.suites=[exact]"])
    assert out.exit_code == 0, out.output
    summary = json.loads((run_dir / EVAL_DIR / EVAL_SUMMARY_FILE).read_text())
    assert list(summary["models"]) == ["tuned"] and summary["n"] == 2 and summary["suites"] == ["exact"]
    wrong = CliRunner().invoke(app, ["eval", str(run_dir), "--split", "train"])
    assert wrong.exit_code == 2 and "split" in wrong.output


def test_missing_split_and_model_are_clear_errors(run_dir: Path, tmp_path: Path):
    config = Config.model_validate(
        {"name": "x", "runs_dir": str(tmp_path), "model": {"name_or_path": "m"}, "data": {"path": "d.jsonl"}}
    )
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="no held-out test set.*data split"):
        evaluate_run(tmp_path / "x", config=config, progress=False)
    empty = tmp_path / "x"
    write_jsonl(empty / DATA_DIR / SPLIT_DIR / "test.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    (empty / CONFIG_FILE).write_text(dump_config(config))
    out = CliRunner().invoke(app, ["eval", str(empty)])
    assert out.exit_code == 2 and "no tuned model" in out.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(Exception, match="bad.jsonl:1"):
        runner_module.read_examples(bad)


@pytest.mark.slow
def test_lora_adapter_final_loads_merged_on_its_base(run_dir: Path, tmp_path: Path):
    # As training leaves it: LoRA on all linear layers plus trainable stop-token rows (peft's
    # trainable tokens), saved with the tokenizer; the loader merges both into the base.
    import torch

    from tunesmith.config import GenerationConfig, LoraConfig, TrainConfig
    from tunesmith.evaluate.stops import stop_token_ids
    from tunesmith.models.adapters import wrap_model

    base_dir = run_dir.parent.parent / "base"
    model, tokenizer = load_for_generation(base_dir)
    stops = stop_token_ids(tokenizer, model.generation_config)
    peft_model = wrap_model(model, TrainConfig(method="lora"), LoraConfig(r=4), stop_token_ids=stops)
    torch.manual_seed(0)
    with torch.no_grad():  # an adapter that has learned something: random, non-zero updates
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.5 if "lora_" in name else 2.0))
    adapter = tmp_path / "final"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    prompts = ["How many orders were shipped?", "Total revenue in 2023?"]
    config = GenerationConfig(max_new_tokens=6)
    expected = [g.token_ids for g in generate(peft_model, tokenizer, prompts, config, progress=False)]
    merged, merged_tokenizer = load_for_generation(adapter, base=base_dir)
    assert [g.token_ids for g in generate(merged, merged_tokenizer, prompts, config, progress=False)] == expected
    plain = generate(load_for_generation(base_dir)[0], tokenizer, prompts, config, progress=False)
    assert [g.token_ids for g in plain] != expected  # the adapter changes the answers
