"""The real pretrained model (SmolLM2-135M-Instruct, imported from its GGUF once per session by the
`smollm2_dir` fixture): its template's masks, LoRA lowering its loss, adapters that survive saving,
reloading and merging, and greedy answers that stop at `<|im_end|>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import LoraConfig, TrainConfig
from tunesmith.data.template import IGNORE_INDEX, encode, load_tokenizer
from tunesmith.examples.text2sql import SYSTEM_PROMPT
from tunesmith.models.adapters import wrap_model
from tunesmith.models.load import load_model
from tunesmith.train.batching import collate
from tunesmith.train.loss import trained_token_loss

pytestmark = pytest.mark.slow

QA = [
    ("How many customers are there?", "SELECT COUNT(*) FROM customers;"),
    ("List the names of products in the category 'Books'.", "SELECT name FROM products WHERE category = 'Books';"),
    ("How many orders were cancelled?", "SELECT COUNT(*) FROM orders WHERE status = 'cancelled';"),
    ("What is the most expensive product?", "SELECT name FROM products ORDER BY price DESC LIMIT 1;"),
]


def _chat(question: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    # Without the ~190-token schema prompt (the template's one-line default instead): ~45 tokens a
    # row, so a training step costs ~1 s on one thread rather than ~6.
    encoded = [encode([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenizer) for q, a in QA]
    return collate(encoded, tokenizer.pad_token_id)


def test_imported_as_a_plain_llama_with_chatml(smollm2_dir: Path, tokenizer: Any) -> None:
    model = load_model(smollm2_dir, dtype="float32")
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "quantization_config")
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>system\n"  # the template writes its default system prompt
    )


def test_masks_train_exactly_each_answer_and_its_im_end(tokenizer: Any) -> None:
    messages = _chat(*QA[0]) + [
        {"role": "user", "content": "And in Paris?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM customers WHERE city = 'Paris';"},
    ]
    enc = encode(messages, tokenizer)
    trained = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    assert [enc.labels[i] for i in trained] == [enc.input_ids[i] for i in trained]
    # Two runs of trained tokens, one per answer, each the answer then <|im_end|>, nothing else.
    runs: list[list[int]] = [[]]
    for prev, i in zip([None, *trained], trained, strict=False):
        if prev is not None and i != prev + 1:
            runs.append([])
        runs[-1].append(enc.input_ids[i])
    assert [tokenizer.decode(r) for r in runs] == [
        f"{messages[2]['content']}<|im_end|>",
        f"{messages[4]['content']}<|im_end|>",
    ]
    assert enc.n_trained == len(trained) and not enc.eos_appended


def test_lora_steps_lower_the_loss_and_the_adapter_survives_save_reload_merge(
    smollm2_dir: Path, batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    from peft import PeftModel

    torch.manual_seed(0)
    base = load_model(smollm2_dir, dtype="float32")
    model = wrap_model(base, TrainConfig(method="lora"), LoraConfig(r=8, alpha=16, train_stop_tokens=False))
    n = int((batch["labels"] != IGNORE_INDEX).sum())

    def loss() -> float:
        with torch.no_grad():
            return trained_token_loss(model, batch, normalizer=n)[0].item()

    before = loss()
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        original = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(4):
        optimizer.zero_grad()
        trained_token_loss(model, batch, normalizer=n)[0].backward()
        optimizer.step()
    after = loss()
    assert after < 0.7 * before, (before, after)  # it knows SQL already (~1 nat): a few steps fit 4 answers

    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_model(smollm2_dir, dtype="float32"), tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(got[mask], original, atol=1e-2)  # the trained adapter is in the merged weights
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=2e-4)


def test_greedy_answers_stop_at_im_end(smollm2_dir: Path, tokenizer: Any) -> None:
    model = load_model(smollm2_dir, dtype="float32").eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():  # generation_config's own eos_token_id: nothing passed in
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(new) < 40
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)
