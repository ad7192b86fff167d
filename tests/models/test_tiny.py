"""Tiny models: real architectures that load with the Auto classes, a ChatML template whose turns
end in EOS, and the same bytes for the same seed."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

from tests.conftest import fixture_tokenizer_dir
from tunesmith.examples.text2sql import example_texts
from tunesmith.models.tiny import (
    END_OF_TURN,
    PAD_TOKEN,
    PRESETS,
    build_tiny_model,
    parameter_count,
    texts_from_jsonl,
)

CONVERSATION = [
    {"role": "system", "content": "Answer with one SQLite query."},
    {"role": "user", "content": "How many customers live in São Paulo?"},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM customers WHERE city = 'São Paulo';"},
]
CHATML = (
    "<|im_start|>system\nAnswer with one SQLite query.<|im_end|>\n"
    "<|im_start|>user\nHow many customers live in São Paulo?<|im_end|>\n"
    "<|im_start|>assistant\nSELECT COUNT(*) FROM customers WHERE city = 'São Paulo';<|im_end|>\n"
)
CORPUS = ["SELECT name FROM products WHERE price > 10;", "How many orders were shipped?", "quokka zanzibar " * 3] * 40
FAST = dict(layers=1, vocab_size=512)  # a few hundred ms per build


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset as tests elsewhere use it: default corpus (the text-to-SQL example)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=example_texts())


def test_builds_a_normal_model_directory_that_auto_classes_load(tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == [
        "README.md",  # the model card: an Apache-2.0 licence `tunesmith train` finds
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == PRESETS["tiny"].vocab_size >= len(tokenizer)
    assert 1_000_000 <= model.num_parameters() <= 2_000_000
    ids = tokenizer.apply_chat_template(CONVERSATION, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_chat_template_is_chatml_and_turns_end_with_eos(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model_config = json.loads((tiny_dir / "config.json").read_text())
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == CHATML
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == END_OF_TURN and tokenizer.pad_token == PAD_TOKEN and tokenizer.bos_token is None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (
        model_config["eos_token_id"] == tokenizer.eos_token_id
        and model_config["pad_token_id"] == tokenizer.pad_token_id
    )
    assert tokenizer.eos_token_id in generation["eos_token_id"]
    # Special tokens are single ids, and the assistant mask covers exactly the answer and its EOS.
    enc = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert ids.count(tokenizer.eos_token_id) == 3
    learned = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(learned) == CONVERSATION[2]["content"] + END_OF_TURN
    assert learned[-1] == tokenizer.eos_token_id


def test_byte_level_tokenizer_round_trips_any_text(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Zoë's café — naïve 東京 🚀 {{x}}\n\ttabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.unk_token_id is None


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", texts=CORPUS, seed=7, **FAST)
    b = build_tiny_model(tmp_path / "b", texts=CORPUS, seed=7, **FAST)
    c = build_tiny_model(tmp_path / "c", texts=CORPUS, seed=8, **FAST)
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "generation_config.json",
    ):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert not filecmp.cmp(a / "model.safetensors", c / "model.safetensors", shallow=False)
    assert filecmp.cmp(a / "tokenizer.json", c / "tokenizer.json", shallow=False)


def test_qwen2_architecture(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "qwen", arch="qwen2", texts=CORPUS, **FAST)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, Qwen2ForCausalLM)
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's qkv bias, absent in Llama
    out = model(input_ids=torch.tensor([[1, 5, 9]]))
    assert out.logits.shape == (1, 3, 512)


def test_texts_train_the_tokenizer(tmp_path: Path, tiny_dir: Path) -> None:
    custom = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", texts=CORPUS, **FAST))
    default = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(custom.tokenize("quokka")) == 1  # merged: it is frequent in CORPUS
    assert len(default.tokenize("quokka")) > 1
    assert len(default.tokenize("SELECT")) == 1  # the default corpus is the SQL example


def test_dimension_overrides_and_errors(tmp_path: Path) -> None:
    path = build_tiny_model(
        tmp_path / "m", texts=CORPUS, hidden_size=64, heads=2, kv_heads=1, intermediate_size=96, **FAST
    )
    config = json.loads((path / "config.json").read_text())
    assert (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["num_hidden_layers"],
    ) == (64, 2, 1, 1)
    with pytest.raises(ValueError, match="must divide"):
        build_tiny_model(tmp_path / "bad", texts=CORPUS, hidden_size=100, heads=3, **FAST)
    with pytest.raises(ValueError, match="preset 'huge'"):
        build_tiny_model(tmp_path / "bad", texts=CORPUS, preset="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs `texts`"):
        build_tiny_model(tmp_path / "bad", **FAST)
    with pytest.raises(ValueError, match="arch 'gpt2'"):
        build_tiny_model(tmp_path / "bad", arch="gpt2", texts=CORPUS, **FAST)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # failed builds leave nothing behind


def test_rebuilding_replaces_the_directory_whole(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    build_tiny_model(out, texts=CORPUS, **FAST)
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_preset_sizes() -> None:
    assert 1e6 <= parameter_count("tiny") <= 2e6
    assert 12e6 <= parameter_count("small") <= 20e6
    assert 95e6 <= parameter_count("medium", "qwen2") <= 125e6
    assert (PRESETS["medium"].hidden_size, PRESETS["medium"].layers, PRESETS["medium"].vocab_size) == (768, 12, 32000)


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "tinyllama-1.1b-chat"])
def test_tokenizer_from_a_real_tokenizer(tmp_path: Path, name: str) -> None:
    source = fixture_tokenizer_dir(name)
    path = build_tiny_model(
        tmp_path / "m", tokenizer_from=source, hidden_size=32, heads=2, kv_heads=1, intermediate_size=32, layers=1
    )
    for f in source.iterdir():  # copied byte for byte, quirks included
        assert filecmp.cmp(f, path / f.name, shallow=False)
    original, copied = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(path)
    assert copied.apply_chat_template(CONVERSATION[1:], tokenize=False) == original.apply_chat_template(
        CONVERSATION[1:], tokenize=False
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(original)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (original.eos_token_id, original.pad_token_id)
    ids = copied(CONVERSATION[1]["content"], return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == len(original)


def test_tokenizer_from_a_directory_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        build_tiny_model(tmp_path / "m", tokenizer_from=tmp_path)


def test_texts_from_jsonl_skips_what_is_not_a_conversation(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    rows = [
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "SELECT 1;"}]}',
        '{"messages": [{"role": "user", "content": ',
        "[1, 2]",
        '{"messages": [{"role": "user", "content": null}]}',
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert texts_from_jsonl(path) == ["hi", "SELECT 1;"]
