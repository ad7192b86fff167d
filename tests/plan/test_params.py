"""Parameter counts from config.json: published sizes of real models, and exact counts of models built on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunesmith.plan.params import PlanError, count_parameters, lora_parameters, read_config, shape_of

CONFIGS = Path(__file__).parent / "configs"

# Published sizes (model cards / safetensors metadata), and (for MoE) parameters active per token.
PUBLISHED = {
    "llama-3-8b.json": (8.03e9, None),
    "qwen2.5-7b.json": (7.62e9, None),
    "mistral-7b-v0.3.json": (7.25e9, None),
    "gemma-2-9b.json": (9.24e9, None),
    "phi-3-mini-4k-instruct.json": (3.82e9, None),
    "mixtral-8x7b-v0.1.json": (46.7e9, 12.9e9),
    "qwen3-8b.json": (8.19e9, None),
    "gpt2.json": (124e6, None),
}


def three_figures(x: float) -> float:
    return float(f"{x:.3g}")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_to_three_significant_figures(name: str):
    total, active = PUBLISHED[name]
    counts = count_parameters(shape_of(CONFIGS / name))
    assert three_figures(counts.total) == total
    assert three_figures(counts.active) == (active or total)


def test_exact_counts_where_known():
    # Exact figures from the safetensors headers of the published checkpoints.
    assert count_parameters(shape_of(CONFIGS / "llama-3-8b.json")).total == 8_030_261_248
    assert count_parameters(shape_of(CONFIGS / "mistral-7b-v0.3.json")).total == 7_248_023_552
    assert count_parameters(shape_of(CONFIGS / "gpt2.json")).total == 124_439_808


def test_tied_embeddings_and_gqa_change_the_count_as_they_should():
    raw = read_config(CONFIGS / "llama-3-8b.json")
    untied = count_parameters(shape_of(raw)).total
    tied = count_parameters(shape_of({**raw, "tie_word_embeddings": True})).total
    assert untied - tied == 128256 * 4096
    mha = count_parameters(shape_of({**raw, "num_key_value_heads": 32})).total
    assert mha - untied == 32 * 2 * 4096 * (32 - 8) * 128  # k and v grow from 8 to 32 heads of 128


def test_multimodal_config_counts_its_text_model():
    shape = shape_of(CONFIGS / "gemma-3-4b-it.json")
    assert shape.model_type == "gemma3_text" and shape.tied_embeddings
    assert shape.head_dim == 256 and shape.layers == 34


def _tiny_configs():
    import transformers as T

    common = dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": T.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "llama_bias": T.LlamaConfig(**common, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
        "mistral": T.MistralConfig(**common, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**common, num_key_value_heads=2),
        "qwen3": T.Qwen3Config(**common, num_key_value_heads=2, head_dim=32),
        "gemma": T.GemmaConfig(**common, num_key_value_heads=1, head_dim=32),
        "gemma2": T.Gemma2Config(**common, num_key_value_heads=2, head_dim=32),
        "gemma3": T.Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=32),
        "phi3": T.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0),
        "mixtral": T.MixtralConfig(**common, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
        "qwen2_moe": T.Qwen2MoeConfig(
            **common,
            num_key_value_heads=2,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=80,
            num_experts=4,
            num_experts_per_tok=2,
        ),
        "gpt2": T.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128),
    }


@pytest.mark.parametrize("name", sorted(_tiny_configs()))
def test_counts_equal_the_built_model_and_peft(name: str):
    """Total from the formula = the model transformers builds; LoRA trainable = what peft wraps."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = shape_of(config.to_dict())
    assert count_parameters(shape).total == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert lora_parameters(shape, 4) == peft_model.get_nb_trainable_parameters()[0]


def test_lora_on_named_targets_only():
    shape = shape_of(CONFIGS / "llama-3-8b.json")
    # q and v: r × (4096 + 4096) + r × (4096 + 1024) per layer.
    assert lora_parameters(shape, 8, ["q_proj", "v_proj"]) == 32 * 8 * ((4096 + 4096) + (4096 + 1024))
    assert lora_parameters(shape, 8, ["q_proj"], trainable_token_rows=2) == 32 * 8 * 8192 + 2 * 4096


def test_unreadable_configs_are_plan_errors(tmp_path: Path):
    with pytest.raises(PlanError, match="no such file"):
        shape_of(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        shape_of(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "mystery"}')
    with pytest.raises(PlanError, match="lacks hidden_size"):
        shape_of(tmp_path)
