"""Parameter counts from a model's `config.json` alone: no weights are downloaded or built.

One description of the architecture (`Shape`) drives everything the plan needs: the total and
active (MoE) parameter count, which of them sit in Linear layers (what NF4 quantises and what LoRA
can target), and the LoRA/QLoRA trainable count for a rank and a list of target modules. The
formulas follow the transformers modelling code of each family (module names included, so a
target list means what peft would match); tests check them against models built on the meta
device and against the published sizes of real models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Families with the Llama block (attention q/k/v/o + gated MLP gate/up/down, RMSNorm) and what
# differs: biases, per-head q/k norms, four norms per layer. Everything else comes from the config.
_QKV_BIAS = {"qwen2", "qwen2_moe"}  # q/k/v have biases, o has none, whatever the config says
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3_text", "olmo2"}  # RMSNorm over head_dim on q and k
_FOUR_NORMS = {"gemma2", "gemma3_text"}  # pre/post norms around both attention and MLP
_FUSED = {"phi3"}  # qkv_proj and gate_up_proj: same parameters, other module names
_GPT2 = {"gpt2"}
_PEFT_EXPERTS = {"mixtral"}  # MoE families whose experts peft's `all-linear` targets (checked in tests)
SUPPORTED = (
    "llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, gemma, gemma2, gemma3(_text), phi3, olmo/olmo2, "
    "smollm3, starcoder2-like, gpt2"
)


class PlanError(ValueError):
    """The model cannot be planned (unreadable or unknown config); the message says which file and why."""


@dataclass(frozen=True)
class Linear:
    """One Linear module of a decoder layer: its name as peft matches it, shape, and how many
    copies a layer holds (experts) and how many of those a token uses (active experts)."""

    name: str
    d_in: int
    d_out: int
    bias: bool = False
    copies: int = 1
    active: int = 1
    is_module: bool = True  # False: a 3-D expert parameter (transformers 5)
    lora_rank: int = 1  # LoRA's rank on it is r × this (peft wraps 3-D expert parameters with rank r per expert)
    in_linears: bool = True  # False: counted in `other` (a router), but LoRA `all-linear` still targets it

    @property
    def params(self) -> int:
        return self.copies * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that decide its size and its memory."""

    model_type: str
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    linears: tuple[Linear, ...]  # per decoder layer
    other_per_layer: int  # norms, routers, q/k norms: parameters per layer outside `linears`
    positions: int = 0  # learned position embeddings (GPT-2), else 0
    final_norm: int = 0
    experts: int = 0  # MoE experts per layer (0: dense)
    experts_per_token: int = 0
    gated_mlp: bool = True
    norm: str = "rms"  # "rms" or "layer"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int  # used per token: differs from total only for MoE
    embedding: int  # input embedding (+ positions)
    head: int  # output head; 0 when tied to the embedding
    linear: int  # in decoder-layer Linear modules and expert weights: what NF4 quantises
    other: int  # norms, routers, biases outside linears

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("total", "active", "embedding", "head", "linear", "other")}


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def read_config(source: str | Path | dict[str, Any] | Any) -> dict[str, Any]:
    """The text model's config as a plain dict, from a model directory, a config.json path, a dict
    or a transformers config. Multimodal configs (Gemma 3) give their `text_config`."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError(f"{path}: no such file (a model directory holds config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"{path}: not valid JSON ({e})") from None
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        raw = source.to_dict()
    text = raw.get("text_config")
    if isinstance(text, dict) and "hidden_size" in text:
        merged = {**text}
        merged.setdefault("model_type", f"{raw.get('model_type', '')}_text")
        # Gemma 3 multimodal ties its text head unless told otherwise, at the top level.
        merged.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", True))
        raw = merged
    if not isinstance(raw.get("model_type"), str):
        raise PlanError("config.json has no model_type: not a transformers model config")
    return raw


def shape_of(config: str | Path | dict[str, Any] | Any) -> Shape:
    """The architecture numbers of a config (see `read_config` for what it accepts)."""
    c = read_config(config)
    mt = c["model_type"]
    if mt in _GPT2:
        return _gpt2_shape(c)
    try:
        h = int(_get(c, "hidden_size"))
        layers = int(_get(c, "num_hidden_layers"))
        heads = int(_get(c, "num_attention_heads"))
        vocab = int(_get(c, "vocab_size"))
    except TypeError:
        raise PlanError(
            f"model_type {mt!r}: config lacks hidden_size/num_hidden_layers/num_attention_heads/vocab_size; "
            f"the plan knows {SUPPORTED}"
        ) from None
    kv = int(_get(c, "num_key_value_heads", default=heads))
    hd = int(_get(c, "head_dim", default=h // heads))
    inter = int(_get(c, "intermediate_size", default=4 * h))
    tied = bool(_get(c, "tie_word_embeddings", default=mt.startswith("gemma")))
    attn_bias = bool(_get(c, "attention_bias", default=False))
    mlp_bias = bool(_get(c, "mlp_bias", default=False))
    q_bias = kv_bias = attn_bias or mt in _QKV_BIAS
    o_bias = attn_bias and mt not in _QKV_BIAS
    norm = h if mt not in {"olmo"} else 0  # OLMo-1's LayerNorm has no parameters
    other = (4 if mt in _FOUR_NORMS else 2) * norm + (2 * hd if mt in _QK_NORM else 0)
    if mt == "olmo2":  # OLMo-2: q/k norms over the whole projection, norms after attention/MLP
        other = 2 * h + hd * heads + hd * kv
    if mt in _FUSED:
        attn = [Linear("qkv_proj", h, heads * hd + 2 * kv * hd, q_bias)]
    else:
        attn = [
            Linear("q_proj", h, heads * hd, q_bias),
            Linear("k_proj", h, kv * hd, kv_bias),
            Linear("v_proj", h, kv * hd, kv_bias),
        ]
    attn.append(Linear("o_proj", heads * hd, h, o_bias))
    experts = int(_get(c, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    top_k = int(_get(c, "num_experts_per_tok", "top_k", default=0) or 0)
    if experts:
        moe_inter = int(_get(c, "moe_intermediate_size", default=inter))
        mlp = [
            Linear("gate_up_proj", h, 2 * moe_inter, copies=experts, active=top_k, is_module=False),
            Linear("down_proj", moe_inter, h, copies=experts, active=top_k, is_module=False),
        ]
        if mt in _PEFT_EXPERTS:
            # peft 0.21 wraps these 3-D parameters (rank r per expert and per fused half) and the router.
            mlp = [
                Linear(
                    "gate_up_proj",
                    h,
                    2 * moe_inter,
                    copies=experts,
                    active=top_k,
                    is_module=True,
                    lora_rank=2 * experts,
                ),
                Linear("down_proj", moe_inter, h, copies=experts, active=top_k, is_module=True, lora_rank=experts),
                Linear("gate", h, experts, in_linears=False),
            ]
        other += experts * h  # the router: one row per expert, not an nn.Linear in transformers 5
        shared = int(_get(c, "shared_expert_intermediate_size", default=0) or 0)
        if shared:  # Qwen-MoE: an always-on dense expert with a sigmoid gate (a Linear h -> 1)
            mlp += [
                Linear("gate_proj", h, shared),
                Linear("up_proj", h, shared),
                Linear("down_proj", shared, h),
                Linear("shared_expert_gate", h, 1),
            ]
    elif mt in _FUSED:
        mlp = [Linear("gate_up_proj", h, 2 * inter, mlp_bias), Linear("down_proj", inter, h, mlp_bias)]
    else:
        mlp = [
            Linear("gate_proj", h, inter, mlp_bias),
            Linear("up_proj", h, inter, mlp_bias),
            Linear("down_proj", inter, h, mlp_bias),
        ]
    return Shape(
        model_type=mt,
        vocab_size=vocab,
        hidden_size=h,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        head_dim=hd,
        intermediate_size=inter,
        tied_embeddings=tied,
        linears=tuple(attn + mlp),
        other_per_layer=other,
        final_norm=norm,
        experts=experts,
        experts_per_token=top_k,
    )


def _gpt2_shape(c: dict[str, Any]) -> Shape:
    h, layers, heads = int(c.get("n_embd", 768)), int(c.get("n_layer", 12)), int(c.get("n_head", 12))
    inter = int(c.get("n_inner") or 4 * h)
    return Shape(
        model_type="gpt2",
        vocab_size=int(c.get("vocab_size", 50257)),
        hidden_size=h,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=inter,
        tied_embeddings=bool(c.get("tie_word_embeddings", True)),
        # Conv1D modules: peft targets them by these names like Linear layers.
        linears=(
            Linear("c_attn", h, 3 * h, True),
            Linear("c_proj", h, h, True),
            Linear("c_fc", h, inter, True),
            Linear("c_proj", inter, h, True),
        ),
        other_per_layer=2 * 2 * h,  # two LayerNorms with bias
        positions=int(c.get("n_positions", 1024)) * h,
        final_norm=2 * h,
        gated_mlp=False,
        norm="layer",
    )


def count_parameters(shape: Shape) -> ParamCount:
    """Total and active parameters, split the way memory needs them."""
    embedding = shape.vocab_size * shape.hidden_size + shape.positions
    head = 0 if shape.tied_embeddings else shape.vocab_size * shape.hidden_size
    linear = shape.layers * sum(m.params for m in shape.linears if m.in_linears)
    inactive = shape.layers * sum(m.params // m.copies * (m.copies - m.active) for m in shape.linears if m.in_linears)
    other = shape.layers * shape.other_per_layer + shape.final_norm
    total = embedding + head + linear + other
    return ParamCount(total, total - inactive, embedding, head, linear, other)


ALL_LINEAR = "all-linear"


def lora_targets(shape: Shape, target_modules: str | Sequence[str]) -> list[Linear]:
    """The Linear modules of one layer that peft's LoRA wraps for `target_modules` ("all-linear":
    every Linear module except the output head; a list: modules whose name ends with one of them)."""
    if target_modules == ALL_LINEAR:
        return [m for m in shape.linears if m.is_module]
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return [m for m in shape.linears if m.is_module and any(m.name == n or m.name.endswith("." + n) for n in names)]


def lora_parameters(
    shape: Shape, r: int, target_modules: str | Sequence[str] = ALL_LINEAR, *, trainable_token_rows: int = 0
) -> int:
    """LoRA/QLoRA trainable parameters: r × (in + out) per targeted module and layer (A is r × in,
    B is out × r), plus the embedding rows of `trainable_token_rows` tokens (tunesmith's
    `lora.train_stop_tokens`; a tied head shares them)."""
    per_layer = sum(m.lora_rank * r * (m.d_in + m.d_out) for m in lora_targets(shape, target_modules))
    return shape.layers * per_layer + trainable_token_rows * shape.hidden_size
