"""Assistant-only loss masks on the real tokenizers: the labels must be exactly each answer plus the
token that ends its turn, on the very ids that apply_chat_template(tokenize=True) produces."""

from __future__ import annotations

import copy
import re
from functools import cache

import pytest
from transformers import AutoTokenizer

from tests.conftest import FIXTURE_TOKENIZERS, fixture_tokenizer_dir
from tunesmith.data import template as template_module
from tunesmith.data.schema import CODES, Conversation, Severity, Source
from tunesmith.data.template import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    Encoded,
    TemplateError,
    encode,
    encode_batch,
    inspect_tokenizer,
    load_tokenizer,
)

# The token each model ends an assistant turn with (from each model's card and template).
TERMINATOR = {
    "qwen2.5-instruct": "<|im_end|>",
    "llama-3.2-instruct": "<|eot_id|>",
    "phi-3-mini-instruct": "<|end|>",
    "mistral-7b-instruct-v0.3": "</s>",
    "tinyllama-1.1b-chat": "</s>",
}
# Tokenizer-level findings each fixture's README row predicts.
EXPECTED_FINDINGS = {
    "qwen2.5-instruct": set(),
    "llama-3.2-instruct": {"double_bos", "pad_token"},
    "phi-3-mini-instruct": {"stop_token_mismatch", "pad_token"},
    "mistral-7b-instruct-v0.3": {"double_bos", "pad_token"},
    "tinyllama-1.1b-chat": set(),
}

WITH_SYSTEM = [
    {"role": "system", "content": "You are a terse geography tutor."},
    {"role": "user", "content": "Which river flows through Vienna?"},
    {"role": "assistant", "content": "The Danube flows through Vienna."},
    {"role": "user", "content": "And through Budapest?"},
    {"role": "assistant", "content": "Also the Danube, it splits Buda from Pest."},
]
NO_SYSTEM = [
    {"role": "user", "content": "Name a prime number above ten."},
    {"role": "assistant", "content": "Eleven is prime."},
    {"role": "user", "content": "Another one, please."},
    {"role": "assistant", "content": "Thirteen works too."},
    {"role": "user", "content": "Write it in Japanese and add an emoji."},
    {"role": "assistant", "content": "十三 🎉 (jūsan)"},
]
CONVERSATIONS = {"with_system": WITH_SYSTEM, "no_system": NO_SYSTEM}

# A Gemma-like template: no system role, it raises instead.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<|end|>\n"
    "{% endfor %}"
)
# A plain-text template that never ends a turn with a special token.
NO_END_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
# A template that only keeps the final assistant answer (the others silently vanish).
DROPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
)


@cache
def _tokenizer(name: str):
    return AutoTokenizer.from_pretrained(fixture_tokenizer_dir(name))


def with_template(chat_template: str | None):
    """A fresh Phi-3 tokenizer (the quickest fixture to load) with its template replaced."""
    tok = AutoTokenizer.from_pretrained(fixture_tokenizer_dir("phi-3-mini-instruct"))
    tok.chat_template = chat_template
    return tok


def trained_runs(encoded: Encoded, tok) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, lab in zip(encoded.input_ids, encoded.labels):
        if lab != IGNORE_INDEX:
            assert lab == token, "a trained label must be the token itself"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, clean_up_tokenization_spaces=False) for r in runs]


def answers(messages, terminator: str) -> list[str]:
    return [m["content"] + terminator for m in messages if m["role"] == "assistant"]


def lstripped(texts: list[str]) -> list[str]:
    # SentencePiece glues the space before a word to the word's first token.
    return [t.lstrip() for t in texts]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_labels_are_each_answer_plus_its_terminator(name, conv):
    tok, messages = _tokenizer(name), CONVERSATIONS[conv]
    enc = encode(messages, tok)
    assert lstripped(trained_runs(enc, tok)) == lstripped(answers(messages, TERMINATOR[name]))
    assert enc.input_ids == tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert enc.attention_mask == [1] * len(enc.input_ids)
    assert enc.n_trained == sum(lab != IGNORE_INDEX for lab in enc.labels)
    assert enc.terminators == (tok.convert_tokens_to_ids(TERMINATOR[name]),) * len(answers(messages, ""))
    assert not enc.eos_appended


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_nothing_but_answers_is_trained(name):
    tok = _tokenizer(name)
    enc = encode(WITH_SYSTEM, tok)
    trained = "".join(trained_runs(enc, tok))
    untrained = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE_INDEX])
    for m in WITH_SYSTEM:
        if m["role"] != "assistant":
            assert m["content"] not in trained
            assert m["content"].split()[-1] in untrained  # the model still sees it
    assert "assistant" not in trained.lower()  # no header


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_train_on_last_trains_only_the_final_answer(name):
    tok = _tokenizer(name)
    enc = encode(NO_SYSTEM, tok, train_on="last")
    assert lstripped(trained_runs(enc, tok)) == lstripped(answers(NO_SYSTEM[-1:], TERMINATOR[name]))
    assert enc.input_ids == encode(NO_SYSTEM, tok).input_ids


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_weight_zero_excludes_that_answer(name):
    tok = _tokenizer(name)
    messages = copy.deepcopy(NO_SYSTEM)
    messages[3]["weight"] = 0
    enc = encode(messages, tok)
    kept = [messages[1], messages[5]]
    assert lstripped(trained_runs(enc, tok)) == lstripped(answers(kept, TERMINATOR[name]))
    assert enc.input_ids == encode(NO_SYSTEM, tok).input_ids  # still shown to the model


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_answer_quoted_in_the_question_trains_the_answer_not_the_question(name):
    tok = _tokenizer(name)
    messages = [
        {"role": "user", "content": "Is the capital Paris or Lyon?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "Say Paris again, then Lyon."},
        {"role": "assistant", "content": "Paris"},
    ]
    enc = encode(messages, tok)
    assert lstripped(trained_runs(enc, tok)) == lstripped(answers(messages, TERMINATOR[name]))
    # The trained tokens sit after the questions: the first trained token comes after "Lyon?".
    first = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)
    assert "Lyon?" in tok.decode(enc.input_ids[:first])


def test_unambiguous_answers_cost_one_render_ambiguous_ones_two(monkeypatch):
    tok = _tokenizer("qwen2.5-instruct")
    calls = []
    real = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda *a, **k: calls.append(1) or real(*a, **k))
    encode(WITH_SYSTEM, tok)
    assert len(calls) == 1
    calls.clear()
    encode([{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "Yes"}], tok)
    assert len(calls) == 2


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_whitespace_around_an_answer_and_the_header_token(name):
    """Llama 3 trims answers; Phi-3's `<|assistant|>` token swallows the answer's leading space:
    neither may shift the labels onto the header."""
    tok = _tokenizer(name)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": " 4 "}]
    enc = encode(messages, tok)
    (run,) = trained_runs(enc, tok)
    assert re.fullmatch(r"\s*4\s*" + re.escape(TERMINATOR[name]), run), run
    assert enc.input_ids == tok.apply_chat_template(messages, tokenize=True, return_dict=False)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_CHAT = [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call00001",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call00001", "content": '{"sky": "snow"}'},
    {"role": "assistant", "content": "It is snowing in Oslo."},
]


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "llama-3.2-instruct"])
def test_tool_calls_train_the_rendered_call(name):
    tok = _tokenizer(name)
    enc = encode(TOOL_CHAT, tok, tools=TOOLS)
    call, answer = trained_runs(enc, tok)
    assert "get_weather" in call and '{"city": "Oslo"}' in call  # arguments as JSON, not a quoted string
    assert call.endswith(TERMINATOR[name]) and answer == "It is snowing in Oslo." + TERMINATOR[name]
    assert 'snow"' not in call  # the tool's result is not trained
    as_dict = copy.deepcopy(TOOL_CHAT)
    as_dict[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Oslo"}  # what HF templates expect
    assert enc.input_ids == tok.apply_chat_template(as_dict, tools=TOOLS, tokenize=True, return_dict=False)


def test_mistral_tool_call_is_trained_as_clean_json():
    """Mistral v3 writes "[/INST] answer" but "[/INST][TOOL_CALLS] [...]", and HTML-escapes the call
    when given dict arguments: the call must still be found, and rendered from string arguments."""
    tok = _tokenizer("mistral-7b-instruct-v0.3")
    enc = encode(TOOL_CHAT, tok, tools=TOOLS)
    call, answer = lstripped(trained_runs(enc, tok))
    assert call == '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "call00001"}]</s>'
    assert answer == "It is snowing in Oslo.</s>"


def test_dict_arguments_are_rendered_like_string_ones():
    tok = _tokenizer("qwen2.5-instruct")
    as_dict = copy.deepcopy(TOOL_CHAT)
    as_dict[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Oslo"}
    assert encode(as_dict, tok, tools=TOOLS) == encode(TOOL_CHAT, tok, tools=TOOLS)


def test_tool_call_a_template_cannot_place_is_left_untrained():
    """A template that writes tool calls in a place and shape unlike an answer: the call is not
    guessed at; the plain answer is still trained."""
    tok = with_template(
        "{% for m in messages %}{% if m.tool_calls %}<|assistant|>CALL {{ m.tool_calls[0].function.name | upper }}<|end|>"
        "{% else %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endif %}{% endfor %}"
    )
    enc = encode(TOOL_CHAT, tok, tools=TOOLS)
    assert trained_runs(enc, tok) == ["It is snowing in Oslo.<|end|>"]
    assert "CALL GET_WEATHER" in tok.decode(enc.input_ids)


def test_empty_answer_trains_only_its_end_of_turn():
    tok = _tokenizer("qwen2.5-instruct")
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]
    enc = encode(messages, tok)
    assert trained_runs(enc, tok) == ["<|im_end|>"] and enc.n_trained == 1


def test_non_string_answer_is_a_row_error():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}]
    with pytest.raises(TemplateError) as err:
        encode(messages, _tokenizer("qwen2.5-instruct"))
    assert err.value.code == "non_string_content" and err.value.field == "messages[1].content"


def test_template_that_rejects_system_gives_template_error_not_a_crash():
    tok = with_template(NO_SYSTEM_TEMPLATE)
    with pytest.raises(TemplateError) as err:
        encode(WITH_SYSTEM, tok)
    assert err.value.code == "template_error" and "System role not supported" in err.value.message
    assert encode(NO_SYSTEM, tok).n_trained > 0
    findings = dict(inspect_tokenizer(tok))
    assert "template_error" in findings and "system" in findings["template_error"]


def test_template_that_drops_an_answer_is_reported_with_the_field():
    tok = with_template(DROPPING_TEMPLATE)
    with pytest.raises(TemplateError) as err:
        encode(NO_SYSTEM, tok)
    assert err.value.code == "template_drops_content" and err.value.field == "messages[1].content"
    # Training only the last answer does not need the dropped ones.
    (run,) = trained_runs(encode(NO_SYSTEM, tok, train_on="last"), tok)
    assert run == NO_SYSTEM[-1]["content"] + "<|end|>"


def test_no_end_of_turn_appends_and_trains_eos():
    tok = with_template(NO_END_TEMPLATE)
    enc = encode(NO_SYSTEM, tok)
    plain = tok.apply_chat_template(NO_SYSTEM, tokenize=True, return_dict=False)
    assert enc.eos_appended and enc.input_ids == plain + [tok.eos_token_id]
    assert enc.labels[-1] == tok.eos_token_id
    assert enc.terminators == (None, None, None)
    # Byte-level BPE merges the template's space and newline into the answer's edge tokens
    # (" Eleven", ".\n"): a token overlapping the answer is trained.
    runs = [run.strip() for run in trained_runs(enc, tok)]
    assert runs == ["Eleven is prime.", "Thirteen works too.", NO_SYSTEM[-1]["content"] + "\n" + tok.eos_token]
    assert "no_end_of_turn" in dict(inspect_tokenizer(tok))


def test_tokenizer_without_template_uses_the_default_and_says_so(tmp_path):
    tok = with_template(None)
    enc = encode(NO_SYSTEM, tok)
    assert lstripped(trained_runs(enc, tok)) == lstripped(answers(NO_SYSTEM, tok.eos_token))
    assert enc.input_ids[0] == tok.bos_token_id  # the default template writes BOS
    assert "no_chat_template" in dict(inspect_tokenizer(tok))
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    assert "no_chat_template" in dict(inspect_tokenizer(loaded))


def test_load_tokenizer_template_override(tmp_path):
    path = fixture_tokenizer_dir("phi-3-mini-instruct")
    assert load_tokenizer(path, chat_template=NO_END_TEMPLATE).chat_template == NO_END_TEMPLATE
    jinja = tmp_path / "chat.jinja"
    jinja.write_text(NO_END_TEMPLATE, encoding="utf-8")
    assert load_tokenizer(path, chat_template=jinja).chat_template == NO_END_TEMPLATE
    with pytest.raises(FileNotFoundError, match="missing.jinja"):
        load_tokenizer(path, chat_template=tmp_path / "missing.jinja")
    with pytest.raises(OSError, match="nowhere: no such directory"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("name", FIXTURE_TOKENIZERS)
def test_inspect_tokenizer_findings_match_the_fixture_readme(name):
    tok = _tokenizer(name)
    findings = inspect_tokenizer(tok)
    assert {code for code, _ in findings} == EXPECTED_FINDINGS[name]
    assert all(CODES[code].severity != Severity.ERROR for code, _ in findings)
    messages = dict(findings)
    if name == "phi-3-mini-instruct":
        assert "<|end|>" in messages["stop_token_mismatch"] and "<|endoftext|>" in messages["stop_token_mismatch"]
        assert "eos" in messages["pad_token"]
    if "double_bos" in messages:
        assert "add_special_tokens=False" in messages["double_bos"]


def test_encode_batch_equals_encode_row_by_row():
    tok = _tokenizer("llama-3.2-instruct")
    bad = with_template(NO_SYSTEM_TEMPLATE)
    rows = [
        Conversation(WITH_SYSTEM, Source("t.jsonl", 1)),
        Conversation(TOOL_CHAT, Source("t.jsonl", 2), tools=TOOLS),
        Conversation(NO_SYSTEM, Source("t.jsonl", 3)),
    ]
    for train_on in ("all", "last"):
        batch = encode_batch(rows, tok, train_on=train_on)
        assert batch == [encode(r.messages, tok, tools=r.tools, train_on=train_on) for r in rows]
    # One bad row does not stop the batch: it comes back as its error, in its place.
    out = encode_batch(rows, bad)
    assert isinstance(out[0], TemplateError) and out[0].code == "template_error"
    assert out[2] == encode(NO_SYSTEM, bad)


def test_iter_encode_chunks_give_the_same_rows():
    tok = _tokenizer("qwen2.5-instruct")
    rows = [Conversation(m, Source("t.jsonl", i)) for i, m in enumerate([WITH_SYSTEM, NO_SYSTEM] * 3)]
    assert list(template_module.iter_encode(rows, tok, chunk_size=4)) == encode_batch(rows, tok)
