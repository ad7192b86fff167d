"""`tunesmith serve` against a real tiny model: adapters chosen per request by model name,
streaming through the `openai` client, a run directory, and the judge surviving the junk verdicts
of a real (random-weight) model."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from tunesmith.config import EvalConfig, GenerationConfig, JudgeConfig
from tunesmith.data.template import load_tokenizer
from tunesmith.evaluate.suites import ScoreRow, get_suite
from tunesmith.examples.text2sql import example_texts
from tunesmith.models.load import load_model
from tunesmith.models.tiny import build_tiny_model
from tunesmith.serve import BASE_NAME, ModelServer, ServeError, create_app, generate_chat

from .evaluate.local_server import running

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "How many customers live in Paris?"}]
TOKENS = 12


def _adapter(base_dir, out_dir, seed: int):
    """A LoRA adapter with random B matrices (a fresh one is a no-op), so it changes the answers."""
    model = load_model(base_dir, dtype="float32")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = build_tiny_model(root / "base", preset="tiny", texts=example_texts())
    return base, {"alpha": _adapter(base, root / "alpha", 1), "beta": _adapter(base, root / "beta", 2)}


@pytest.fixture(scope="module")
def server(models):
    base, adapters = models
    model_server = ModelServer.load(base, adapters, generation=GenerationConfig(max_new_tokens=TOKENS))
    with running(create_app(model_server)) as url:
        yield model_server, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _alone(base_dir, adapter_dir=None) -> str:
    """The greedy answer of the base (or of one adapter loaded alone), without the server."""
    from peft import PeftModel

    model = load_model(base_dir, dtype="float32")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return generate_chat(model, load_tokenizer(base_dir), MESSAGES, GenerationConfig(max_new_tokens=TOKENS)).text


def _ask(client, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=TOKENS, temperature=0)
    return reply.choices[0].message.content


def test_each_model_name_answers_as_that_adapter_alone(server, models):
    _, client = server
    base_dir, adapters = models
    assert [m.id for m in client.models.list().data] == [BASE_NAME, str(base_dir), "alpha", "beta"]
    answers = {name: _ask(client, name) for name in ("alpha", "beta", BASE_NAME, "alpha")}
    assert len({answers["alpha"], answers["beta"], answers[BASE_NAME]}) == 3  # three different models
    # Switching back and forth gives exactly what each adapter gives when loaded alone.
    assert answers["alpha"] == _alone(base_dir, adapters["alpha"])
    assert answers["beta"] == _alone(base_dir, adapters["beta"])
    assert answers[BASE_NAME] == _alone(base_dir) == _ask(client, str(base_dir))


def test_concurrent_requests_for_different_adapters_do_not_mix(server):
    from concurrent.futures import ThreadPoolExecutor

    _, client = server
    names = ["alpha", "beta", BASE_NAME, "beta", "alpha", BASE_NAME]
    alone = {name: _ask(client, name) for name in set(names)}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        answers = list(pool.map(lambda name: _ask(client, name), names))
    assert answers == [alone[name] for name in names]


def test_streaming_through_the_openai_client(server):
    _, client = server
    stream = client.chat.completions.create(
        model="beta", messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert len([p for p in pieces if p]) > 1  # it really streamed, piece by piece
    assert "".join(pieces) == _ask(client, "beta")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[0].choices[0].delta.role == "assistant"


def test_usage_finish_reason_and_errors(server):
    _, client = server
    reply = client.chat.completions.create(model="alpha", messages=MESSAGES, max_tokens=3)
    assert reply.usage.completion_tokens <= 3 and reply.usage.prompt_tokens > 5
    if reply.usage.completion_tokens == 3:
        assert reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError, match="gamma"):
        client.chat.completions.create(model="gamma", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="alpha", messages=[])


def test_stop_strings_cut_the_answer(server):
    _, client = server
    full = _ask(client, "alpha")
    stop = full.strip()[len(full.strip()) // 2 :][:2]
    assert stop.strip(), full
    reply = client.chat.completions.create(
        model="alpha", messages=MESSAGES, max_tokens=TOKENS, temperature=0, stop=[stop]
    )
    assert reply.choices[0].message.content == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_judge_survives_a_real_model_that_talks_junk(server):
    """The tiny model's verdicts are random tokens: every verdict must come back invalid, counted,
    after one retry each, with the model's usage counted, and nothing scored as zero."""
    _, client = server
    config = EvalConfig(judge=JudgeConfig(url=str(client.base_url), model="alpha", max_tokens=8, concurrency=2))
    suite = get_suite("judge", config)
    rows = [
        ScoreRow(id="0", prompt=MESSAGES, prediction="SELECT COUNT(*) FROM customers", reference="SELECT 1"),
        ScoreRow(id="1", prompt="Say hi.", prediction="hi"),
        ScoreRow(id="2", prompt="Say hi.", prediction="hi", baseline="hello"),
    ]
    scores = suite.score(rows)
    summary = suite.summarize(scores)
    assert summary["invalid_verdicts"] == 3 and summary["invalid_reasons"] == {"unparseable": 3}
    assert all(s["attempts"] == 2 for s in scores)
    assert summary["mean_scores"] == {"accuracy": None, "format_compliance": None, "tone": None}
    assert summary["wins"] == summary["losses"] == summary["ties"] == 0
    assert summary["usage"]["requests"] == 6 and summary["usage"]["completion_tokens"] > 0


def test_run_directory_serves_its_adapter_under_the_run_name(models, tmp_path):
    import shutil

    from tunesmith.config import Config, dump_config
    from tunesmith.runs import CONFIG_FILE, FINAL_DIR, write_text

    base_dir, adapters = models
    run = tmp_path / "run"
    shutil.copytree(adapters["alpha"], run / FINAL_DIR)
    load_tokenizer(base_dir).save_pretrained(run / FINAL_DIR)
    config = Config.model_validate(
        {"name": "my-run", "model": {"name_or_path": str(base_dir)}, "data": {"path": "train.jsonl"}}
    )
    write_text(run / CONFIG_FILE, dump_config(config))
    model_server = ModelServer.load(run, generation=GenerationConfig(max_new_tokens=TOKENS))
    assert model_server.model_names() == [BASE_NAME, str(base_dir), "my-run"]
    answer = model_server.complete("my-run", MESSAGES).text
    assert answer == _alone(base_dir, adapters["alpha"])
    full = tmp_path / "full-run"  # a full fine-tune: final/ is a whole model, served under the run's name
    shutil.copytree(base_dir, full / FINAL_DIR)
    config.name = "full-run"
    write_text(full / CONFIG_FILE, dump_config(config))
    assert ModelServer.load(full).model_names() == [BASE_NAME, str(full / FINAL_DIR), "full-run"]
    with pytest.raises(ServeError, match="base"):
        ModelServer.load(base_dir, {BASE_NAME: adapters["alpha"]})
    with pytest.raises(ServeError, match="adapter_config.json"):
        ModelServer.load(base_dir, {"x": tmp_path})


def test_cli_binds_loopback_by_default_and_rejects_bad_adapters(monkeypatch, models):
    import uvicorn

    from tunesmith.cli.main import app

    base_dir, adapters = models
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(host=host, port=port))
    result = CliRunner().invoke(app, ["serve", str(base_dir), "--adapter", f"alpha={adapters['alpha']}"])
    assert result.exit_code == 0, result.output
    assert seen == {"host": "127.0.0.1", "port": 8000}
    assert "alpha" in result.output
    result = CliRunner().invoke(app, ["serve", str(base_dir), "--adapter", "no-equals-sign"])
    assert result.exit_code == 2 and "NAME=PATH" in result.output
    result = CliRunner().invoke(app, ["serve", str(base_dir / "missing")])
    assert result.exit_code == 2
