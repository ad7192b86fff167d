"""Make a loaded base model trainable: every weight (full), LoRA adapters, or QLoRA.

QLoRA = the base Linear layers stored as bitsandbytes 4-bit NF4 with double quantization
(~0.5 byte per weight), computing in `model.dtype` (`auto`: bfloat16 where the device has it,
else float32), with fp32 LoRA adapters on top. bitsandbytes >= 0.45 runs 4-bit on CPU too.

Gradient checkpointing is not switched on here (peft's `prepare_model_for_kbit_training` would by
default): it trades ~30% more compute for activation memory, a choice for the memory planner.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

from tunesmith.config import Config, ConfigError, LoraConfig, TrainConfig
from tunesmith.models.load import load_model

# peft (0.21) reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model,
# which prints a FutureWarning into every `tunesmith train`; nothing for the user to act on.
_PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


def check_method_available(method: str) -> None:
    """Raise ConfigError before any model loads if `train.method` cannot run on this machine."""
    if method != "qlora":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "train.method=qlora needs bitsandbytes, which is not installed: "
            "pip install 'tunesmith[qlora]' (bitsandbytes>=0.45), or set train.method=lora"
        )
    try:
        from transformers.integrations import validate_bnb_backend_availability

        usable = validate_bnb_backend_availability(raise_exception=False)
    except Exception as e:  # a broken native library fails at import, with its own long message
        raise ConfigError(
            f"train.method=qlora: bitsandbytes is installed but does not load ({type(e).__name__}: {e}); "
            "reinstall it for this machine (pip install -U bitsandbytes), or set train.method=lora"
        ) from None
    if not usable:
        import bitsandbytes

        raise ConfigError(
            f"train.method=qlora: bitsandbytes {bitsandbytes.__version__} has no backend for this machine's devices; "
            "install a build that supports them (pip install -U bitsandbytes), or set train.method=lora"
        )


def prepare_model(config: Config, *, stop_token_ids: Sequence[int] = ()) -> Any:
    """Load `config.model` and make it trainable as `config.train.method` says.
    `stop_token_ids`: the tokens that end answers in the training data (see wrap_model)."""
    check_method_available(config.train.method)
    model = load_model(
        config.model.name_or_path,
        dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
        quantization="4bit" if config.train.method == "qlora" else None,
    )
    return wrap_model(model, config.train, config.lora, stop_token_ids=stop_token_ids)


def wrap_model(model: Any, train: TrainConfig, lora: LoraConfig, *, stop_token_ids: Sequence[int] = ()) -> Any:
    """Full: every parameter trains. LoRA/QLoRA: a peft model where only the adapters train, plus
    (with `lora.train_stop_tokens`) the embedding rows of `stop_token_ids`, through peft's
    trainable tokens (the tied output head follows). For QLoRA `model` must already be loaded in
    4-bit (`load_model(..., quantization="4bit")`)."""
    if train.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if train.method == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ValueError("train.method=qlora: the model must be loaded with quantization='4bit'")
        _check_cpu_4bit_shapes(model)
        # Freezes the base and upcasts norms/embeddings to fp32 for stable training.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_config = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,  # "all-linear" never includes the output head
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        bias="none",
        trainable_token_indices=sorted(set(stop_token_ids)) if lora.train_stop_tokens and stop_token_ids else None,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION, category=FutureWarning)
        return get_peft_model(model, peft_config)


def _check_cpu_4bit_shapes(model: Any) -> None:
    """bitsandbytes' AVX512-BF16 CPU kernel repacks each 4-bit layer the first time it runs without
    gradients (validation), and can only for layers `in_features` a multiple of the quantization
    block (64) and `out_features` of 32; anything smaller crashes inside it with "shape '[32, 0]' is
    invalid". Say so before training starts, not at the first validation."""
    bad = [
        f"{name} ({m.in_features} -> {m.out_features})"
        for name, m in model.named_modules()
        if getattr(m, "support_avx512bf16_for_cpu", False)
        and getattr(getattr(m, "weight", None), "quant_state", None) is not None
        and (m.in_features % m.weight.quant_state.blocksize or m.out_features % 32)
    ]
    if bad:
        raise ConfigError(
            f"train.method=qlora on this CPU needs 4-bit layers at least 64 wide (bitsandbytes' CPU kernel); "
            f"{len(bad)} are not, e.g. {bad[0]}: use train.method=lora for a model this small"
        )


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the parameters they encode,
    not the bytes that store them (two per byte), so QLoRA reports the same total as LoRA."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
