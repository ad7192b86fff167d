"""Loading a base model: safetensors only, no remote code unless asked, one clear sentence on failure."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tunesmith.models import load
from tunesmith.models.load import ModelLoadError, load_model, native_bf16, resolve_dtype
from tunesmith.models.tiny import build_tiny_model

CORPUS = ["SELECT name FROM products WHERE price > 10;", "How many orders were shipped?"] * 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base") / "model", texts=CORPUS, layers=1, vocab_size=512)


def test_loads_a_local_directory_with_its_weights(model_dir: Path) -> None:
    model = load_model(model_dir)
    assert isinstance(model, LlamaForCausalLM)
    saved = load_file(model_dir / "model.safetensors")
    assert saved and all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert next(model.parameters()).dtype == resolve_dtype("auto")
    assert load_model(str(model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_auto_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4
    assert resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="expected auto"):
        resolve_dtype("fp8")  # type: ignore[arg-type]


def test_native_bf16_asks_the_gpu_or_the_cpu_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx, avx512_bf16, expected in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older or non-x86 build: no probe, no bf16
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert native_bf16() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4
    assert native_bf16() is False


def test_refuses_pickled_weights(tmp_path: Path, model_dir: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(model_dir / "config.json", pickled)
    torch.save(load_file(model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only pickled weights \(pytorch_model\.bin\).*safetensors only"):
        load_model(pickled)
    (pickled / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(pickled)


def test_trust_remote_code_is_off_unless_asked(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config pointing at repository code: the code runs only with trust_remote_code=True."""
    import transformers.dynamic_module_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep copied code out of ~/.cache
    repo = tmp_path / "repo_with_code"
    shutil.copytree(model_dir, repo)
    marker = tmp_path / "code_ran"
    (repo / "custom_llama.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        # Subclasses: loading remote code marks its classes for auto-class saving, which must not
        # leak into the real LlamaForCausalLM used by every other test in this process.
        "class CustomConfig(LlamaConfig): pass\n"
        "class CustomModel(LlamaForCausalLM): config_class = CustomConfig\n"
    )
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_llama.CustomConfig", "AutoModelForCausalLM": "custom_llama.CustomModel"}
    (repo / "config.json").write_text(json.dumps(config))

    assert isinstance(load_model(repo), LlamaForCausalLM)
    assert not marker.exists()
    load_model(repo, trust_remote_code=True)
    assert marker.exists()


@pytest.mark.parametrize("name", ["examples/nowhere/tiny-model", "./tiny-model", "~/no/such/model"])
def test_missing_path(name: str) -> None:
    with pytest.raises(ModelLoadError, match=f"could not load {name}: no such directory"):
        load_model(name)


def test_a_file_is_not_a_model(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="a file, not a model directory"):
        load_model(model_dir / "config.json")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, and a hub cache of our own (empty); returns the cache directory."""
    from huggingface_hub import constants

    monkeypatch.setattr(load, "hub_reachable", lambda timeout_s=2.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_without_network_fails_fast_and_clearly(offline_hub: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert str(err.value).startswith(
        "could not load Qwen/Qwen2.5-0.5B-Instruct: no network and not in the local cache: give a local directory"
    )
    assert time.monotonic() - started < 5  # transformers alone retries for ~45 s
    assert isinstance(err.value, OSError)  # what callers of from_pretrained already catch


def test_a_tokenizer_hub_id_without_network_fails_fast_too(offline_hub: Path) -> None:
    from tunesmith.data.template import load_tokenizer

    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="no network and not in the local cache: give a local directory"):
        load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.monotonic() - started < 5


def test_offline_mode_means_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load.hub_reachable() is False


def test_hub_id_without_network_loads_from_the_cache(offline_hub: Path, model_dir: Path) -> None:
    commit = "0" * 40
    repo = offline_hub / "models--acme--tiny-sql"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    started = time.monotonic()
    model = load_model("acme/tiny-sql")
    assert time.monotonic() - started < 5  # no download retries on the way
    assert torch.equal(model.lm_head.weight, load_model(model_dir).lm_head.weight)
