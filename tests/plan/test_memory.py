"""Memory terms, the fit solver and the activation coefficients measured on our own loss path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tunesmith.plan.memory import (
    Setup,
    activation_bytes_per_token,
    alternatives,
    estimate_memory,
    solve_fit,
    weight_bytes,
)
from tunesmith.plan.params import shape_of

CONFIGS = Path(__file__).parent / "configs"
MISTRAL = shape_of(CONFIGS / "mistral-7b-v0.3.json")
LLAMA3 = shape_of(CONFIGS / "llama-3-8b.json")


def test_the_guides_figures_for_a_7b_model():
    assert weight_bytes(7_000_000_000, "bfloat16") == 14_000_000_000
    assert 3.5e9 <= weight_bytes(7_000_000_000, "nf4") <= 4.0e9
    full = estimate_memory(MISTRAL, Setup(method="full", seq_len=512, weight_dtype="bfloat16"))
    assert full.total > 60e9
    assert full.dominant()[0] == "optimizer"


def test_lora_and_qlora_keep_only_adapter_state():
    lora = estimate_memory(MISTRAL, Setup(method="lora", seq_len=512))
    qlora = estimate_memory(MISTRAL, Setup(method="qlora", seq_len=512))
    assert lora.terms["gradients"] == lora.terms["optimizer"] == 0
    assert lora.terms["lora"] == lora.trainable_parameters * 16
    assert (
        lora.trainable_parameters == qlora.trainable_parameters == 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * (4096 + 14336))
    )
    # NF4 linears plus fp32 embedding and head (prepare_model_for_kbit_training upcasts them).
    linear = 7_248_023_552 - 2 * 32768 * 4096 - 65 * 4096
    assert qlora.terms["weights"] == pytest.approx(linear * 0.5159 + 4 * (7_248_023_552 - linear), rel=1e-3)
    assert qlora.total < lora.total / 2


def test_autocast_copies_only_with_fp32_weights_under_bf16():
    gpu = estimate_memory(MISTRAL, Setup(method="lora", weight_dtype="bfloat16", compute="bf16"))
    cpu = estimate_memory(MISTRAL, Setup(method="lora", weight_dtype="float32", compute="bf16", device="cpu"))
    assert "autocast_copies" not in gpu.terms
    assert cpu.terms["autocast_copies"] == 2 * (7_248_023_552 - 2 * 32768 * 4096 - 65 * 4096)


def test_on_cpu_the_allocator_decides_what_freed_memory_costs():
    """glibc keeps freed activation temporaries; tcmalloc/jemalloc return them, so full
    fine-tuning's gradients overlap the activations backward frees (bench/memory.py)."""
    cpu = {"weight_dtype": "float32", "compute": "bf16", "device": "cpu", "seq_len": 512}
    for method in ("full", "lora"):
        glibc = estimate_memory(LLAMA3, Setup(method=method, **cpu))
        tc = estimate_memory(LLAMA3, Setup(method=method, allocator="tcmalloc", **cpu))
        assert "freed_during_backward" not in glibc.terms and "allocator_retention" not in tc.terms
        overlap = min(tc.terms["activations"], tc.terms["gradients"])
        assert tc.terms["freed_during_backward"] == -overlap
        assert overlap > 0 if method == "full" else overlap == 0
        assert tc.total < glibc.total
    gpu = estimate_memory(LLAMA3, Setup(method="full", allocator="tcmalloc", seq_len=512))
    assert "freed_during_backward" not in gpu.terms  # CUDA's caching allocator is another story


def test_activations_scale_with_tokens_and_checkpointing_cuts_them():
    one = estimate_memory(LLAMA3, Setup(method="lora", micro_batch=1, seq_len=1024))
    four = estimate_memory(LLAMA3, Setup(method="lora", micro_batch=4, seq_len=1024))
    assert four.terms["activations"] == pytest.approx(4 * one.terms["activations"], rel=1e-6)
    ckpt = estimate_memory(LLAMA3, Setup(method="lora", micro_batch=4, seq_len=1024, gradient_checkpointing=True))
    assert ckpt.terms["activations"] < four.terms["activations"] / 8


def test_logits_are_bounded_by_the_chunk_on_plain_heads_but_not_elsewhere():
    short = estimate_memory(LLAMA3, Setup(method="lora", micro_batch=1, seq_len=512))
    long = estimate_memory(LLAMA3, Setup(method="lora", micro_batch=8, seq_len=4096))
    # Only the trained rows grow (hidden × 8 bytes per token); the [chunk × vocab] logits do not.
    assert long.terms["logits"] - short.terms["logits"] == (8 * 4096 - 512) * 4096 * 8
    gpt2 = shape_of(CONFIGS / "gpt2.json")
    g1 = estimate_memory(gpt2, Setup(method="lora", micro_batch=1, seq_len=512))
    g8 = estimate_memory(gpt2, Setup(method="lora", micro_batch=8, seq_len=512))
    assert g8.terms["logits"] == 8 * g1.terms["logits"] == 8 * 512 * 50257 * 14


def test_sharding_divides_parameter_state():
    one = estimate_memory(MISTRAL, Setup(method="full", seq_len=512))
    eight = estimate_memory(MISTRAL, Setup(method="full", seq_len=512, shards=8))
    assert eight.terms["optimizer"] == pytest.approx(one.terms["optimizer"] / 8, abs=1)
    assert eight.terms["activations"] == one.terms["activations"]


def test_fit_finds_the_largest_micro_batch_for_a_known_budget():
    setup = Setup(method="lora", seq_len=1024)
    at4 = estimate_memory(LLAMA3, replace(setup, micro_batch=4)).total
    fit = solve_fit(LLAMA3, setup, budget=at4, effective_batch=32)
    assert (fit.fits, fit.micro_batch, fit.grad_accum) == (True, 4, 8)
    fit = solve_fit(LLAMA3, setup, budget=at4 - 1, effective_batch=32)
    assert (fit.micro_batch, fit.grad_accum) == (3, 11)  # ceil(32 / 3), as the recipe computes it
    # Never beyond the effective batch per device.
    fit = solve_fit(LLAMA3, replace(setup, shards=2), budget=10**13, effective_batch=16)
    assert (fit.micro_batch, fit.grad_accum) == (8, 1)


def test_nothing_fits_gives_ranked_alternatives_that_do_fit():
    setup = Setup(method="lora", seq_len=2048)
    budget = 24 * 10**9
    fit = solve_fit(LLAMA3, setup, budget=budget, effective_batch=16)
    assert not fit.fits and fit.micro_batch == 0
    alts = alternatives(LLAMA3, setup, budget=budget, effective_batch=16)
    changes = [a.change for a in alts]
    assert changes[0] == "gradient checkpointing"
    assert "--method qlora" in changes
    assert all(a.total <= budget and a.micro_batch >= 1 for a in alts)
    assert changes.index("--method qlora") < changes.index(next(c for c in changes if c.startswith("--gpus")))


def _saved_bytes_per_token(method: str, hidden: int, inter: int, kv_heads: int) -> float:
    """What autograd saves per token and layer on train/loss.py's path, by saved-tensor hooks:
    the difference between a 3-layer and a 2-layer model, at two lengths (weights copies cancel)."""
    import transformers as T
    from peft import LoraConfig, get_peft_model

    from tunesmith.train.loss import trained_token_loss

    def saved(layers: int, seq: int) -> int:
        torch.manual_seed(0)
        config = T.LlamaConfig(
            vocab_size=500,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=kv_heads,
        )
        model = T.AutoModelForCausalLM.from_config(config)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        ids = torch.randint(0, 500, (2, seq))
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            trained_token_loss(model, {"input_ids": ids, "labels": ids.clone()}, normalizer=1)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in params)

    return ((saved(3, 128) - saved(2, 128)) - (saved(3, 64) - saved(2, 64))) / (2 * 64)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_coefficients_match_what_autograd_saves(method: str):
    hidden, inter, kv_heads = 128, 352, 2
    measured = _saved_bytes_per_token(method, hidden, inter, kv_heads)
    shape = shape_of(
        {
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": kv_heads,
            "vocab_size": 500,
        }
    )
    setup = Setup(method=method, weight_dtype="float32", compute="bf16", lora_r=8, device="cpu")
    assert activation_bytes_per_token(shape, setup) == pytest.approx(measured, rel=0.05)
