"""Licence classification and the training gate; base vs instruct."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config import ConfigError, load_config
from tunesmith.plan.kind import detect_kind
from tunesmith.plan.license import classify, detect_license
from tunesmith.plan.training import check_license

CONFIGS = Path(__file__).parent / "configs"


def model_dir(
    tmp_path: Path,
    name: str = "model",
    card: str | None = None,
    license_text: str | None = None,
    template: bool = False,
) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text((CONFIGS / "mistral-7b-v0.3.json").read_text())
    if card is not None:
        (d / "README.md").write_text(card)
    if license_text is not None:
        (d / "LICENSE").write_text(license_text)
    if template:
        (d / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"})
        )
    return d


@pytest.mark.parametrize(
    ("license_id", "cls"),
    [
        ("apache-2.0", "permissive"),
        ("MIT", "permissive"),
        ("bsd-3-clause", "permissive"),
        ("llama3.1", "restricted"),
        ("llama2", "restricted"),
        ("gemma", "restricted"),
        ("cc-by-nc-4.0", "restricted"),
        ("creativeml-openrail-m", "restricted"),
        ("qwen-research", "restricted"),
        ("other", "unknown"),
        (None, "unknown"),
    ],
)
def test_classes(license_id, cls):
    assert classify(license_id) == cls


def test_card_wins_then_license_file_then_name(tmp_path: Path):
    card = "---\nlicense: llama3.1\nlanguage: en\n---\n# Meta Llama 3.1\n"
    info = detect_license(model_dir(tmp_path, "a", card=card), "a")
    assert (info.id, info.cls, info.source) == ("llama3.1", "restricted", "README.md")
    assert "700M" in info.why
    other = "---\nlicense: other\nlicense_name: gemma\n---\n"
    assert detect_license(model_dir(tmp_path, "b", card=other), "b").id == "gemma"
    apache = "                                 Apache License\n                           Version 2.0, January 2004\n"
    info = detect_license(model_dir(tmp_path, "c", license_text=apache), "c")
    assert (info.id, info.cls, info.source) == ("apache-2.0", "permissive", "LICENSE")
    info = detect_license(model_dir(tmp_path, "SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct")
    assert (info.cls, info.source) == ("permissive", "name")
    info = detect_license(model_dir(tmp_path, "d"), "d")
    assert (info.id, info.cls, info.source) == (None, "unknown", "none")


def test_train_refuses_restricted_and_unknown_until_acknowledged(tmp_path: Path):
    restricted = model_dir(tmp_path, "r", card="---\nlicense: llama3\n---\n")
    config = load_config(overrides=["data.path=unused.jsonl", f"model.name_or_path={restricted}"])
    with pytest.raises(ConfigError, match=r"licence restricted .*license_acknowledged=true"):
        check_license(config)
    check_license(
        load_config(
            overrides=["data.path=unused.jsonl", f"model.name_or_path={restricted}", "model.license_acknowledged=true"]
        )
    )
    unknown = model_dir(tmp_path, "u")
    with pytest.raises(ConfigError, match="licence unknown"):
        check_license(load_config(overrides=["data.path=unused.jsonl", f"model.name_or_path={unknown}"]))
    permissive = model_dir(tmp_path, "p", card="---\nlicense: apache-2.0\n---\n")
    check_license(load_config(overrides=["data.path=unused.jsonl", f"model.name_or_path={permissive}"]))


def test_train_stops_before_writing_anything_on_a_refused_licence(tmp_path: Path):
    from tunesmith.train.recipe import train

    unknown = model_dir(tmp_path, "u")
    config = load_config(
        overrides=["data.path=unused.jsonl", f"model.name_or_path={unknown}", f"runs_dir={tmp_path / 'runs'}"]
    )
    with pytest.raises(ConfigError, match="licence unknown"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_tiny_models_carry_a_permissive_licence(tmp_path: Path):
    from tunesmith.models.tiny import build_tiny_model

    d = build_tiny_model(
        tmp_path / "tiny",
        texts=["hello world"] * 20,
        vocab_size=300,
        hidden_size=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate_size=64,
    )
    assert detect_license(d, str(d)).cls == "permissive"


def test_base_vs_instruct(tmp_path: Path):
    assert detect_kind(model_dir(tmp_path, "Qwen2.5-7B-Instruct"), "Qwen/Qwen2.5-7B-Instruct").kind == "instruct"
    assert detect_kind(model_dir(tmp_path, "gemma-2-9b-it"), "google/gemma-2-9b-it").kind == "instruct"
    base = detect_kind(model_dir(tmp_path, "Mistral-7B-v0.3"), "mistralai/Mistral-7B-v0.3")
    assert base.kind == "base" and "no chat format" in base.advice
    # A chat template alone makes an unnamed model instruct; the name "base" wins over a template.
    assert detect_kind(model_dir(tmp_path, "m1", template=True), "m1").kind == "instruct"
    shipped = detect_kind(model_dir(tmp_path, "Foo-7B-Base", template=True), "Foo-7B-Base")
    assert shipped.kind == "base" and any("ships a chat template" in e for e in shipped.evidence)
