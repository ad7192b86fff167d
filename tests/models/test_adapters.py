from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config import Config, ConfigError, LoraConfig, TrainConfig
from tunesmith.models import adapters
from tunesmith.models.adapters import check_method_available, prepare_model, trainable_parameters, wrap_model

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 512


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def config(path: Path, method: str, **lora: object) -> Config:
    return Config(
        model={"name_or_path": str(path), "dtype": "float32"},
        data={"path": "d.jsonl"},
        train={"method": method},
        lora=lora,
    )


def train_steps(model: torch.nn.Module, steps: int = 2) -> dict[str, torch.Tensor]:
    """Snapshot every parameter, then take `steps` AdamW steps on a next-token loss."""
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # bitsandbytes repacks 4-bit weights into its CPU layout on first use
        model(input_ids=ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):  # two: LoRA's B starts at zero, so A only gets a gradient from step 2
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return before


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def lora_params_expected(r: int) -> int:
    # r x (in + out) for each Linear in each layer: q, k, v, o, gate, up, down; never lm_head.
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = [
        (HIDDEN, HIDDEN),
        (HIDDEN, kv),
        (HIDDEN, kv),
        (HIDDEN, HIDDEN),
        (HIDDEN, INTER),
        (HIDDEN, INTER),
        (INTER, HIDDEN),
    ]
    return LAYERS * sum(r * (i + o) for i, o in shapes)


def test_lora_trains_only_the_adapters(tiny_dir: Path) -> None:
    model = prepare_model(config(tiny_dir, "lora", r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    base_total = LlamaForCausalLM.from_pretrained(tiny_dir).num_parameters()
    assert trainable_parameters(model) == (lora_params_expected(4), base_total + lora_params_expected(4))

    before = train_steps(model)
    assert changed(model, before) == trainable  # every adapter moved, every base weight is bit-identical


def test_full_trains_every_weight(tiny_dir: Path) -> None:
    model = prepare_model(config(tiny_dir, "full"))
    trainable, total = trainable_parameters(model)
    assert trainable == total == model.num_parameters()
    before = train_steps(model, steps=1)
    assert changed(model, before) == set(before)


def test_lora_options_reach_peft(tiny_dir: Path) -> None:
    model = prepare_model(
        config(
            tiny_dir,
            "lora",
            r=4,
            alpha=8,
            dropout=0.1,
            use_dora=True,
            use_rslora=True,
            target_modules=["q_proj", "v_proj"],
        )
    )
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 4**0.5)  # rsLoRA: alpha / sqrt(r), not alpha / r
    assert isinstance(q.lora_dropout["default"], torch.nn.Dropout) and q.lora_dropout["default"].p == 0.1
    assert "default" in q.lora_magnitude_vector  # DoRA
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "v_proj"}


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_runs_on_cpu_with_4bit_base(tiny_dir: Path) -> None:
    import bitsandbytes as bnb

    model = prepare_model(config(tiny_dir, "qlora", r=4))
    linears = [m for n, m in model.named_modules() if n.endswith(("q_proj.base_layer", "down_proj.base_layer"))]
    assert len(linears) == 2 * LAYERS and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert linears[0].weight.quant_type == "nf4"
    base_total = LlamaForCausalLM.from_pretrained(tiny_dir).num_parameters()
    # 4-bit weights count as the parameters they encode, so the total matches the LoRA model's.
    assert trainable_parameters(model) == (lora_params_expected(4), base_total + lora_params_expected(4))

    before = train_steps(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert changed(model, before) == trainable


def test_qlora_needs_a_4bit_model(tiny_dir: Path) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="quantization='4bit'"):
        wrap_model(model, TrainConfig(method="qlora"), LoraConfig())


def test_missing_bitsandbytes_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="not installed.*train.method=lora"):
        check_method_available("qlora")
    check_method_available("lora")  # no bitsandbytes needed
    check_method_available("full")


def test_bitsandbytes_without_a_backend_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("bitsandbytes")
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "validate_bnb_backend_availability", lambda raise_exception: False)
    with pytest.raises(ConfigError, match="no backend.*train.method=lora"):
        adapters.check_method_available("qlora")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_gradients_match_the_dequantized_model(tiny_dir: Path) -> None:
    # bitsandbytes' CPU 4-bit matmul has no registered autograd kernel (PyTorch warns it "may be
    # silently incorrect"): check the adapters' gradients against plain LoRA on the same weights.
    import bitsandbytes as bnb

    qlora = prepare_model(config(tiny_dir, "qlora", r=4))
    reference = LlamaForCausalLM.from_pretrained(tiny_dir)
    dequantized = {
        name.removeprefix("base_model.model.").removesuffix(".base_layer") + ".weight": bnb.functional.dequantize_4bit(
            m.weight.data, m.weight.quant_state
        ).float()
        for name, m in qlora.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    assert not reference.load_state_dict(dequantized, strict=False).unexpected_keys
    reference = wrap_model(reference, TrainConfig(method="lora"), LoraConfig(r=4))
    ref_params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, p in qlora.named_parameters():
            if "lora_B" in name:  # B starts at zero, which would hide most of the path
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
            if "lora_" in name:
                ref_params[name].copy_(p)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    qlora(input_ids=ids, labels=ids).loss.backward()
    reference(input_ids=ids, labels=ids).loss.backward()
    for name, p in qlora.named_parameters():
        if p.requires_grad:
            expected = ref_params[name].grad
            assert (p.grad - expected).abs().max() <= 0.05 * expected.abs().max(), name


def test_stop_token_rows_train_with_lora_and_only_those_rows(tiny_dir: Path) -> None:
    """The end-of-turn token's embedding row trains (LoraConfig.train_stop_tokens); no other row moves."""
    model = prepare_model(config(tiny_dir, "lora", r=4), stop_token_ids=[5])
    embed = model.get_input_embeddings()
    rows = torch.arange(VOCAB)
    with torch.no_grad():
        before = embed(rows).clone()
    assert any("trainable_tokens" in n for n, p in model.named_parameters() if p.requires_grad)
    train_steps(model)
    with torch.no_grad():
        moved = (embed(rows) - before).abs().sum(-1) > 0
    assert moved.nonzero().flatten().tolist() == [5]

    off = prepare_model(config(tiny_dir, "lora", r=4, train_stop_tokens=False), stop_token_ids=[5])
    assert not any("trainable_tokens" in n for n, p in off.named_parameters() if p.requires_grad)
