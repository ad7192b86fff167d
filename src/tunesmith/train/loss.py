"""The loss on trained tokens only, normalised over the whole accumulation window.

Why not `model(**batch, labels=...)`: it applies the LM head to every position and takes a
log-softmax over the full vocabulary for all of them, though most positions (prompt, padding)
carry no loss. That is [tokens x vocab] fp32 logits (GBs for a 150k vocabulary) and a large share
of a CPU step. Here the decoder runs to hidden states, only rows whose next token is trained go
through the head, and cross-entropy is summed in fp32. On the same batches (bench/train_step.py,
15M Llama, LoRA, CPU) that is 1.21x the tokens/s of the plain loss, 1.52x together with dropping
the attention mask of right-padded batches (`_needed_mask`); one step on the widest batch
grows memory by 0.56x as much (3.1 GB vs 5.6 GB).

Why divide by `normalizer` instead of averaging each micro-batch: with gradient accumulation the
mean of per-micro-batch means weights a token in a short micro-batch more than one in a long one,
so the result is not the gradient of the big batch. Summing and dividing every micro-batch by the
window's total trained-token count gives exactly the big batch's loss and gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.train.batching import IGNORE_INDEX

# Architectures whose causal-LM forward is exactly `lm_head(hidden)` (plus Gemma's optional
# `final_logit_softcapping`). Others may scale logits (Granite, Cohere) or add losses (MoE routers),
# so they go through the model's own forward with `num_items_in_batch`: same normalisation,
# full-vocabulary cost.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
     "olmo", "olmo2", "starcoder2", "smollm3", "stablelm"}
)  # fmt: skip
# fp32 logits per head chunk: 2**26 floats = 256 MiB, ~1,700 rows of a 151k (Qwen) vocabulary.
# Above one chunk the head is recomputed in backward (one extra head matmul) so memory stays bounded.
MAX_LOGITS_PER_CHUNK = 2**26


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
    if n_trained <= chunk:
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
