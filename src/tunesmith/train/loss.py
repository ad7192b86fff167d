"""The loss on trained tokens only, normalised over the whole accumulation window.

Why not `model(**batch, labels=...)`: it applies the LM head to every position and takes a
log-softmax over the full vocabulary for all of them, though most positions (prompt, padding)
carry no loss. That is [tokens x vocab] fp32 logits (GBs for a 150k vocabulary) and a large share
of a CPU step. Here the decoder runs to hidden states, only rows whose next token is trained go
through the head, and cross-entropy is summed in fp32. On the same batches (bench/train_step.py,
15M Llama, LoRA, CPU) that is 1.21x the tokens/s of the plain loss, 1.52x together with dropping
the attention mask of right-padded batches (`_needed_mask`); one step on the widest batch
grows memory by 0.56x as much (3.1 GB vs 5.6 GB).

Why the head's gradient is computed in its forward (`_HeadLoss`): even restricted to trained
rows, [rows x vocab] fp32 logits, their log-softmax and its gradient were the largest tensors
of a step (~0.6 GB at 8 x 400 tokens and a 32k vocabulary). Going a chunk of rows at a time and
producing the gradient on the spot bounds that to one chunk, with no head matmul recomputed in
backward. Liger-Kernel's fused linear cross-entropy does this with Triton on GPUs; it has no CPU
path and needs a Triton device, so it is written here in plain torch.

Why divide by `normalizer` instead of averaging each micro-batch: with gradient accumulation the
mean of per-micro-batch means weights a token in a short micro-batch more than one in a long one,
so the result is not the gradient of the big batch. Summing and dividing every micro-batch by the
window's total trained-token count gives exactly the big batch's loss and gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.data.template import IGNORE_INDEX

# Architectures whose causal-LM forward is exactly `lm_head(hidden)` (plus Gemma's optional
# `final_logit_softcapping`). Others may scale logits (Granite, Cohere) or add losses (MoE routers),
# so they go through the model's own forward with `num_items_in_batch`: same normalisation,
# full-vocabulary cost.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "phi3",
        "olmo",
        "olmo2",
        "starcoder2",
        "smollm3",
        "stablelm",
    }
)
# fp32 logits per head chunk: 2**24 floats = 64 MiB, 512 rows of a 32k vocabulary, 110 of Qwen's 151k.
# Smaller chunks measured no faster; larger ones only hold more memory.
MAX_LOGITS_PER_CHUNK = 2**24


def trained_token_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, normalizer: int | float
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of this micro-batch's trained tokens divided by `normalizer`.

    `batch` holds `input_ids`, `labels` (IGNORE_INDEX = not trained; aligned with input_ids, the
    shift happens here) and optionally `attention_mask`. `normalizer` is the number of trained
    tokens in the whole accumulation window (all micro-batches, all ranks). Returns the loss to
    call `backward()` on and this micro-batch's trained-token count.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t+1
    trained = targets != IGNORE_INDEX
    n_trained = int(trained.sum())
    if normalizer <= 0:
        raise ValueError(f"normalizer must be the window's trained-token count (> 0), got {normalizer}")
    config = model.config.get_text_config()
    if config.model_type not in PLAIN_HEAD_MODEL_TYPES:
        out = model(**batch, use_cache=False, num_items_in_batch=normalizer)
        return out.loss, n_trained
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=_needed_mask(batch.get("attention_mask")), use_cache=False
    ).last_hidden_state
    rows = hidden[:, :-1][trained]  # [n_trained, hidden]
    head = model.get_output_embeddings()
    softcap = getattr(config, "final_logit_softcapping", None)
    chunk = max(1, MAX_LOGITS_PER_CHUNK // config.vocab_size)
    wanted = targets[trained]
    linear = _linear_head(head)
    if linear is not None:
        weight, bias = linear
        total = _HeadLoss.apply(rows, weight, bias, wanted, softcap, chunk, torch.is_grad_enabled())
    elif n_trained <= chunk:
        total = _summed_ce(rows, wanted, head, softcap)
    else:
        total = sum(
            checkpoint(_summed_ce, rows[i : i + chunk], wanted[i : i + chunk], head, softcap, use_reentrant=False)
            for i in range(0, n_trained, chunk)
        )
    return total / normalizer, n_trained


def _needed_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when every row is right-padded (ones, then zeros): causal attention alone already keeps
    pads out of every real token's view, and without a mask SDPA takes its causal fast path
    instead of a dense [rows, 1, len, len] mask: 1.25x faster steps (bench/train_step.py)."""
    if mask is None or torch.equal(mask.long().cumprod(dim=-1), mask.long()):
        return None
    return mask


def _summed_ce(rows: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(rows).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _linear_head(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a head that computes `F.linear(x, weight, bias)`: a plain Linear, or
    peft's trainable-token rows on one (`lora.train_stop_tokens` on a tied head), whose
    effective weight is the base weight with the trained rows swapped in. None for anything else
    (LoRA or quantization on the head, DeepSpeed ZeRO-3's parameters, which only the module's
    own hooks gather): those go through the module itself."""
    if type(head) is torch.nn.Linear:
        base, weight = head, head.weight
    else:
        layer = getattr(head, "token_adapter", None)  # peft's TrainableTokensWrapper
        if (
            layer is None
            or type(layer.base_layer) is not torch.nn.Linear
            or layer.merged
            or layer.disable_adapters
            or getattr(head, "disable_adapters", False)
            or not layer.active_adapters
        ):
            return None
        base, weight = layer.base_layer, layer.get_merged_weights(layer.active_adapters)
    if hasattr(base.weight, "ds_id"):
        return None
    return weight, base.bias


class _HeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `rows @ weight.T + bias` (fp32, optionally softcapped) against
    `targets`, a chunk of rows at a time, the gradient produced in the same pass: no [rows x vocab]
    tensor outlives its chunk and backward only scales the stored gradients. Matmuls run in the
    autocast dtype when autocast is on, as `head(rows)` would."""

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, softcap, chunk, with_grad):
        device = rows.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype
        need_rows, need_weight, need_bias = (
            with_grad and t is not None and t.requires_grad for t in (rows, weight, bias)
        )
        x, w = rows.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        grad_rows = torch.empty_like(rows) if need_rows else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        with torch.autocast(device, enabled=False):
            for start in range(0, rows.shape[0], chunk):
                xc, tc = x[start : start + chunk], targets[start : start + chunk]
                logits = torch.nn.functional.linear(xc, w, b).float()
                if softcap:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                if not (need_rows or need_weight or need_bias):
                    continue
                dlogits = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                dlogits[torch.arange(len(tc), device=tc.device), tc] -= 1
                if softcap:
                    dlogits *= 1 - capped * capped
                d = dlogits.to(dtype)
                if need_rows:
                    grad_rows[start : start + chunk] = d @ w
                if need_weight:
                    grad_weight += d.T @ xc
                if need_bias:
                    grad_bias += dlogits.sum(0)
        ctx.save_for_backward(grad_rows, grad_weight, grad_bias)
        ctx.dtypes = (rows.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        scaled = [None if g is None else (g * grad_total).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return *scaled, None, None, None, None
