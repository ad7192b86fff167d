"""Batched generation: same answers as one at a time, stops on every stop token, reports the unstopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import fixture_tokenizer_dir
from tunesmith.config import GenerationConfig
from tunesmith.evaluate.generate import (
    _result,
    generate,
    load_for_generation,
    prompt_messages,
    reference_answer,
    render_prompt,
    unstopped_finding,
)
from tunesmith.evaluate.stops import stop_token_ids
from tunesmith.models.tiny import build_tiny_model

PROMPTS = [
    "How many customers live in Paris?",
    "List every product in the toys category, cheapest first, with its price.",
    [{"role": "system", "content": "Answer with SQL."}, {"role": "user", "content": "Orders in May 2024?"}],
    "Total revenue?",
    "Which city has the most delivered orders, and how many of them were there last year?",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # A small vocabulary the corpus fills: the model's vocabulary is exactly the tokenizer's, so
    # answers decode to text (a larger embedding would mostly emit ids the tokenizer lacks).
    corpus = [p for p in PROMPTS if isinstance(p, str)] * 20 + ["SELECT name FROM products WHERE price > 10;"] * 20
    return build_tiny_model(tmp_path_factory.mktemp("gen") / "tiny", vocab_size=300, texts=corpus, seed=3)


def _boost(model, token_id: int) -> None:
    """Make `token_id` the greedy choice at every step (a model that always ends its turn at once)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token_id] = 1e4
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)


def test_prompt_and_reference_from_a_conversation():
    conversation = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert prompt_messages(conversation) == conversation[:4]
    assert reference_answer(conversation) == "a2"
    assert prompt_messages(conversation[:2]) == conversation[:2]


@pytest.mark.slow  # first user of the module fixture: builds tiny models (10-15 s measured under load)
def test_batched_equals_one_at_a_time(tiny: Path):
    model, tokenizer = load_for_generation(tiny)
    config = GenerationConfig(max_new_tokens=12, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, config, progress=False)
    single = [
        generate(model, tokenizer, [p], config.model_copy(update={"batch_size": 1}), progress=False)[0] for p in PROMPTS
    ]
    assert [b.text for b in batched] == [s.text for s in single]
    assert any(b.text for b in batched)  # real text, not only special tokens
    assert all(b.new_tokens == 12 and not b.stopped for b in batched)  # random weights never stop


def test_shared_system_prompt_is_prefilled_once_with_the_same_answers(tiny: Path, monkeypatch):
    from tunesmith.evaluate import generate as generate_module

    model, tokenizer = load_for_generation(tiny)
    system = {
        "role": "system",
        "content": "Write one SQLite query. " + "SELECT name FROM products WHERE price > 10; " * 4,
    }
    prompts = [[system, {"role": "user", "content": p}] for p in PROMPTS if isinstance(p, str)]
    prefills = []
    real = generate_module._prefill
    monkeypatch.setattr(generate_module, "_prefill", lambda *a: prefills.append(len(a[1])) or real(*a))
    config = GenerationConfig(max_new_tokens=10, batch_size=3)  # 4 prompts: a batch of 3, then one alone
    batched = generate(model, tokenizer, prompts, config, progress=False)
    assert prefills and min(prefills) >= generate_module.MIN_SHARED_PREFIX  # the shared path ran
    single = [generate(model, tokenizer, [p], config, progress=False)[0] for p in prompts]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert len(prefills) == 1  # one per batch of several rows; a batch of one needs none


def test_stops_on_the_stop_token_and_reports_the_unstopped(tiny: Path):
    model, tokenizer = load_for_generation(tiny)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    _boost(model, end)
    config = GenerationConfig(max_new_tokens=8, batch_size=2)
    out = generate(model, tokenizer, PROMPTS, config, progress=False)
    assert all(o.stopped and o.new_tokens == 1 and o.text == "" for o in out)
    assert unstopped_finding(out, 8) is None
    # Without <|im_end|> among the stop tokens, nothing stops: the "never stops talking" symptom.
    never = generate(model, tokenizer, PROMPTS, config, stop_ids=[tokenizer.pad_token_id], progress=False)
    assert all(not o.stopped and o.new_tokens == 8 for o in never)
    finding = unstopped_finding(never, 8, model="tuned")
    assert finding["count"] == len(PROMPTS) and "max_new_tokens=8" in finding["message"] and finding["advice"]


def test_result_cuts_at_the_first_stop_token(tiny: Path):
    _, tokenizer = load_for_generation(tiny)
    ids = tokenizer("SELECT 1", add_special_tokens=False)["input_ids"]
    stop, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    r = _result([*ids, stop, pad, pad], [stop], tokenizer)
    assert (r.text, r.stopped, r.new_tokens) == ("SELECT 1", True, len(ids) + 1)
    r = _result(ids, [stop], tokenizer)
    assert (r.stopped, r.new_tokens) == (False, len(ids))


def test_sampling_settings_are_used(tiny: Path):
    model, tokenizer = load_for_generation(tiny)
    torch.manual_seed(0)
    config = GenerationConfig(max_new_tokens=10, temperature=5.0, top_p=1.0)
    a = generate(model, tokenizer, PROMPTS[:3], config, progress=False)
    greedy = generate(model, tokenizer, PROMPTS[:3], GenerationConfig(max_new_tokens=10), progress=False)
    assert [x.text for x in a] != [x.text for x in greedy]


# ---- real tokenizers: the template's end-of-turn token is a stop token --------------------------------

# tokenizer fixture -> (end-of-turn token the template writes, what the rendered prompt ends with)
REAL = {
    "llama-3.2-instruct": ("<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "phi-3-mini-instruct": ("<|end|>", "<|assistant|>\n"),
    "qwen2.5-instruct": ("<|im_end|>", "<|im_start|>assistant\n"),
    "mistral-7b-instruct-v0.3": ("</s>", "[/INST]"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_stop_tokens_of_real_tokenizers(name: str):
    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(fixture_tokenizer_dir(name))
    end_of_turn, prompt_end = REAL[name]
    stops = stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids(end_of_turn) in stops
    assert tokenizer.eos_token_id in stops
    rendered = render_prompt([{"role": "user", "content": "How many orders?"}], tokenizer)
    assert rendered.endswith(prompt_end)
    assert "How many orders?" in rendered


def test_llama3_generation_config_list_of_eos_is_honoured():
    from transformers import GenerationConfig as HFGenerationConfig

    from tunesmith.data.template import load_tokenizer

    tokenizer = load_tokenizer(fixture_tokenizer_dir("llama-3.2-instruct"))
    # Llama 3's generation_config.json lists <|end_of_text|>, <|eom_id|> and <|eot_id|>.
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    assert set(ids) <= set(stop_token_ids(tokenizer, HFGenerationConfig(eos_token_id=ids)))


@pytest.mark.slow
def test_phi3_stops_on_end_of_turn_not_only_eos(tmp_path: Path):
    # Phi-3's EOS is <|endoftext|> while its turns end with <|end|>: generation must stop on <|end|>.
    path = build_tiny_model(tmp_path / "phi", tokenizer_from=fixture_tokenizer_dir("phi-3-mini-instruct"))
    model, tokenizer = load_for_generation(path)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end != tokenizer.eos_token_id
    _boost(model, end)
    out = generate(model, tokenizer, PROMPTS[:2], GenerationConfig(max_new_tokens=6), progress=False)
    assert all(o.stopped and o.new_tokens == 1 for o in out)
