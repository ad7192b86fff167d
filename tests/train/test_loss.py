from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from tests.conftest import tiny_llama as shared_tiny_llama
from tunesmith.train import loss as loss_module
from tunesmith.train.batching import IGNORE_INDEX, collate
from tunesmith.train.loss import trained_token_loss

VOCAB, PAD = 512, 0


def tiny_llama(seed: int = 0, *, tied: bool = False) -> LlamaForCausalLM:
    model = shared_tiny_llama(
        seed,
        vocab=VOCAB,
        hidden=64,
        tied=tied,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return model.float().train()


def examples(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompt tokens (untrained) followed by an answer (trained), varied lengths and answer sizes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt, answer = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(1, 10, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (prompt + answer,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def by_hand(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The textbook computation: full logits, log-softmax, shift, pick trained positions, mean."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return -logp[keep].gather(-1, targets[keep][:, None]).mean()


def n_trained(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_equals_hand_computation() -> None:
    model = tiny_llama()
    batch = collate(examples(6), PAD)
    loss, n = trained_token_loss(model, batch, normalizer=n_trained(batch))
    assert n == n_trained(batch) > 0
    assert torch.allclose(loss, by_hand(model, batch), atol=1e-5, rtol=0)


def test_a_mask_that_is_not_right_padding_is_respected() -> None:
    # Right padding lets the loss drop the mask (causality hides the pads); left padding must not.
    model = tiny_llama()
    right = collate(examples(3, seed=9), PAD)
    pads = (right["attention_mask"] == 0).sum(dim=1)
    left = {k: torch.stack([row.roll(int(n), 0) for row, n in zip(v, pads)]) for k, v in right.items()}
    assert left["attention_mask"][:, -1].all() and not left["attention_mask"][:, 0].all()
    loss, _ = trained_token_loss(model, left, normalizer=n_trained(left))
    assert torch.allclose(loss, by_hand(model, left), atol=1e-5, rtol=0)


def test_accumulation_equals_one_big_batch() -> None:
    data = examples(12, seed=1)
    micro = [data[0:1], data[1:5], data[5:7], data[7:12]]  # uneven trained-token counts
    counts = [n_trained(collate(m, PAD)) for m in micro]
    assert len(set(counts)) == 4

    big_model = tiny_llama()
    big_batch = collate(data, PAD)
    big_loss, _ = trained_token_loss(big_model, big_batch, normalizer=n_trained(big_batch))
    big_loss.backward()

    model = tiny_llama()
    total = torch.zeros(())
    for m in micro:
        loss, _ = trained_token_loss(model, collate(m, PAD), normalizer=sum(counts))
        loss.backward()
        total += loss.detach()

    assert torch.allclose(total, big_loss.detach(), atol=1e-6, rtol=0)
    for (name, p), q in zip(model.named_parameters(), big_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=1e-5), name


def test_pads_and_untrained_tails_contribute_nothing() -> None:
    model = tiny_llama()
    data = examples(4, seed=2)
    base = collate(data, PAD)
    loss, _ = trained_token_loss(model, base, normalizer=10)

    repadded = collate(data, pad_id=7)  # pad id is not a signal: positions are
    assert not torch.equal(repadded["input_ids"], base["input_ids"])
    assert torch.allclose(trained_token_loss(model, repadded, normalizer=10)[0], loss, atol=1e-6, rtol=0)

    # Untrained tokens after the last trained one are context for nothing the loss sees.
    tail = [{"input_ids": e["input_ids"] + [5, 6, 7], "labels": e["labels"] + [IGNORE_INDEX] * 3} for e in data]
    tail_changed = [{"input_ids": e["input_ids"] + [9, 9, 9], "labels": e["labels"] + [IGNORE_INDEX] * 3} for e in data]
    with torch.no_grad():
        a, _ = trained_token_loss(model, collate(tail, PAD), normalizer=10)
        b, _ = trained_token_loss(model, collate(tail_changed, PAD), normalizer=10)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.allclose(a, loss.detach(), atol=1e-6, rtol=0)


def test_padded_rows_equal_each_example_alone() -> None:
    model = tiny_llama()
    data = examples(3, seed=3)
    together, _ = trained_token_loss(model, collate(data, PAD), normalizer=1)
    alone = sum(trained_token_loss(model, collate([e], PAD), normalizer=1)[0] for e in data)
    assert torch.allclose(together, alone, atol=0, rtol=1e-6)  # sums of ~100: relative tolerance


def test_rounding_the_width_up_changes_neither_loss_nor_gradients() -> None:
    model = tiny_llama()
    data = examples(5, seed=11)
    exact, rounded = collate(data, PAD), collate(data, PAD, pad_to_multiple_of=32)
    assert rounded["input_ids"].shape[1] == 32 > exact["input_ids"].shape[1]
    loss, n = trained_token_loss(model, exact, normalizer=n_trained(exact))
    loss_rounded, n_rounded = trained_token_loss(model, rounded, normalizer=n_trained(rounded))
    assert n == n_rounded and torch.allclose(loss, loss_rounded, atol=1e-6, rtol=0)
    want, got = grads_of(model, loss), grads_of(model, loss_rounded)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-7, rtol=1e-5), name


def test_chunked_head_gives_the_same_loss_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = collate(examples(8, seed=4), PAD)
    whole_model, chunked_model = tiny_llama(), tiny_llama()
    whole, _ = trained_token_loss(whole_model, batch, normalizer=n_trained(batch))
    whole.backward()
    monkeypatch.setattr(loss_module, "MAX_LOGITS_PER_CHUNK", 5 * VOCAB)  # 5 rows per chunk
    chunked, _ = trained_token_loss(chunked_model, batch, normalizer=n_trained(batch))
    chunked.backward()
    assert torch.allclose(whole, chunked, atol=1e-6, rtol=0)
    for p, q in zip(whole_model.parameters(), chunked_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=1e-5)


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tied", [False, True])
def test_head_gradient_equals_autograd_through_full_logits(tied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head's gradient is produced inside its forward, in chunks; it must equal plain autograd
    # through [rows x vocab] logits, the tied embedding's two gradient paths summed included.
    monkeypatch.setattr(loss_module, "MAX_LOGITS_PER_CHUNK", 7 * VOCAB)  # several chunks, a ragged last one
    model = tiny_llama(tied=tied)
    batch = collate(examples(8, seed=4), PAD)
    assert loss_module._linear_head(model.lm_head) is not None
    ours = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    reference = by_hand(model, batch)
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)
    got, want = grads_of(model, ours), grads_of(model, reference)
    assert got.keys() == want.keys() and ("lm_head.weight" in got) != tied
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-7, rtol=1e-5), name


def test_head_under_bf16_autocast_stays_close_to_fp32() -> None:
    model = tiny_llama()
    batch = collate(examples(8, seed=4), PAD)
    fp32 = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    want = grads_of(model, fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    got = grads_of(model, bf16)
    assert bf16.dtype == torch.float32 and abs(float(bf16) - float(fp32)) < 0.01 * float(fp32)
    for name in want:  # bf16 keeps ~3 significant digits; the direction must survive
        cosine = torch.nn.functional.cosine_similarity(got[name].flatten(), want[name].flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))


def test_validation_under_no_grad_gives_the_same_loss() -> None:
    model = tiny_llama()
    batch = collate(examples(5, seed=2), PAD)
    with torch.no_grad():
        evaluated, _ = trained_token_loss(model, batch, normalizer=n_trained(batch))
    assert not evaluated.requires_grad
    assert torch.allclose(evaluated, by_hand(model, batch), atol=1e-6, rtol=0)


def test_trained_stop_token_rows_of_a_tied_head_get_the_autograd_gradient() -> None:
    # lora.train_stop_tokens on a tied model: peft wraps the head; its effective weight (the base
    # with the trained rows swapped in) goes through the chunked head loss.
    from tunesmith.config import LoraConfig, TrainConfig
    from tunesmith.models.adapters import wrap_model

    model = wrap_model(tiny_llama(tied=True), TrainConfig(method="lora"), LoraConfig(r=4), stop_token_ids=[5, 9])
    head = model.get_output_embeddings()
    assert type(head) is not torch.nn.Linear and loss_module._linear_head(head) is not None
    batch = collate(examples(6, seed=7), PAD)
    ours = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    got, want = grads_of(model, ours), grads_of(model, theirs)
    assert any("trainable_tokens_delta" in n for n in got)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-7, rtol=1e-4), name


def test_a_lora_adapted_head_goes_through_the_module_in_recomputed_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.config import LoraConfig, TrainConfig
    from tunesmith.models.adapters import wrap_model

    model = wrap_model(tiny_llama(), TrainConfig(method="lora"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert loss_module._linear_head(model.get_output_embeddings()) is None
    batch = collate(examples(6, seed=8), PAD)
    whole = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    want = grads_of(model, whole)
    monkeypatch.setattr(loss_module, "MAX_LOGITS_PER_CHUNK", 5 * VOCAB)
    chunked = trained_token_loss(model, batch, normalizer=n_trained(batch))[0]
    assert torch.allclose(whole, chunked, atol=1e-6, rtol=0)
    assert torch.allclose(whole, model(**batch).loss, atol=1e-5, rtol=0)
    for name, grad in grads_of(model, chunked).items():
        assert torch.allclose(grad, want[name], atol=1e-7, rtol=1e-5), name


def test_softcapped_head_matches_the_model_own_loss() -> None:
    torch.manual_seed(0)
    cfg = Gemma2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=VOCAB,
        final_logit_softcapping=3.0,
    )
    model = Gemma2ForCausalLM(cfg).float().train()
    with torch.no_grad():  # random init gives logits near 0, where tanh is the identity: make the cap bite
        model.lm_head.weight.mul_(30)
    batch = collate(examples(4, seed=5), PAD)
    ours, _ = trained_token_loss(model, batch, normalizer=n_trained(batch))
    theirs = model(**batch).loss  # transformers' own forward, softcap included, mean over trained tokens
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    got, want = grads_of(model, ours), grads_of(model, theirs)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-4), name
    # and the cap matters at this scale: without it the loss differs
    model.config.final_logit_softcapping = None
    assert not torch.allclose(trained_token_loss(model, batch, normalizer=n_trained(batch))[0], ours, atol=0.1)


def test_unknown_head_falls_back_to_the_model_forward_with_the_same_normalisation() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    ).train()
    batch = collate(examples(5, seed=6), PAD)
    ours, n = trained_token_loss(model, batch, normalizer=2 * n_trained(batch))
    assert n == n_trained(batch)
    assert torch.allclose(ours, by_hand(model, batch) / 2, atol=1e-5, rtol=0)


def test_micro_batch_without_trained_tokens_adds_zero() -> None:
    model = tiny_llama()
    batch = collate([{"input_ids": [3, 4, 5], "labels": [IGNORE_INDEX] * 3}], PAD)
    loss, n = trained_token_loss(model, batch, normalizer=4)
    loss.backward()  # the loop may backward every micro-batch; this one must not fail
    assert n == 0 and float(loss) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_normalizer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="normalizer"):
        trained_token_loss(tiny_llama(), collate(examples(1), PAD), normalizer=0)


def test_works_through_a_lora_wrapper_and_reaches_the_adapters() -> None:
    from tunesmith.config import LoraConfig, TrainConfig
    from tunesmith.models.adapters import wrap_model

    model = wrap_model(tiny_llama(), TrainConfig(method="lora"), LoraConfig(r=4))
    with torch.no_grad():  # B starts at zero; give the adapters a say so the test can see them
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = collate(examples(5, seed=8), PAD)
    loss, _ = trained_token_loss(model, batch, normalizer=n_trained(batch))
    assert torch.allclose(loss, model(**batch).loss, atol=1e-5, rtol=0)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
