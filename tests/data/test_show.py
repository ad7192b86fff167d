"""`data show`: the view must describe the very tokens and labels training uses."""

from __future__ import annotations

import io
import json
import re
from functools import cache

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from tests.conftest import fixture_tokenizer_dir
from tunesmith.data.schema import Conversation, Source
from tunesmith.data.show import CLOSE, OPEN, from_json, marked_text, print_token_view, to_json, token_view
from tunesmith.data.template import IGNORE_INDEX, encode, render

CHAT = [
    {"role": "system", "content": "Reply in French."},
    {"role": "user", "content": "Say hello."},
    {"role": "assistant", "content": "Bonjour !"},
    {"role": "user", "content": "And goodbye?"},
    {"role": "assistant", "content": "Au revoir. 👋"},
]


@cache
def _tokenizer(name: str):
    return AutoTokenizer.from_pretrained(fixture_tokenizer_dir(name))


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "mistral-7b-instruct-v0.3", "phi-3-mini-instruct"])
def test_view_is_the_encoded_tokens_and_joins_back_into_the_rendered_text(name):
    tok = _tokenizer(name)
    views = token_view(Conversation(CHAT, Source("x.jsonl", 1)), tok)
    enc = encode(CHAT, tok)
    assert [v.id for v in views] == enc.input_ids
    assert [v.trained for v in views] == [lab != IGNORE_INDEX for lab in enc.labels]
    assert "".join(v.text for v in views) == render(CHAT, tok).text


def test_json_round_trips():
    views = token_view(CHAT, _tokenizer("qwen2.5-instruct"))
    assert from_json(json.loads(json.dumps(to_json(views)))) == views
    first = to_json(views)["tokens"][0]
    assert set(first) == {"id", "text", "trained"} and isinstance(first["id"], int)


@pytest.mark.parametrize("name", ["qwen2.5-instruct", "phi-3-mini-instruct"])
def test_guillemets_mark_exactly_the_trained_tokens(name):
    tok = _tokenizer(name)
    views = token_view(CHAT, tok, train_on="all")
    console = Console(file=io.StringIO(), width=60)  # not a terminal: no colour
    print_token_view(views, tok, console)
    out = console.file.getvalue()
    summary = out.splitlines()[-1]
    body = out[: -len(summary) - 2]  # the marked text, its newline, the summary line, its newline
    assert body.replace(OPEN, "").replace(CLOSE, "") == "".join(v.text for v in views)
    marked = re.findall(f"{OPEN}(.*?){CLOSE}", body, flags=re.S)
    runs, current = [], ""
    for v in views + [None]:
        if v is not None and v.trained:
            current += v.text
        elif current:
            runs.append(current)
            current = ""
    assert marked == runs and len(runs) == 2
    assert marked[-1].strip().startswith("Au revoir. 👋")
    n_trained = sum(v.trained for v in views)
    assert f"{len(views)} tokens, {n_trained} trained" in out


def test_summary_names_the_terminator():
    phi = _tokenizer("phi-3-mini-instruct")
    out = io.StringIO()
    print_token_view(token_view(CHAT, phi), phi, Console(file=out))
    assert "'<|end|>'" in out.getvalue() and "not EOS" in out.getvalue()
    qwen = _tokenizer("qwen2.5-instruct")
    out = io.StringIO()
    print_token_view(token_view(CHAT, qwen), qwen, Console(file=out))
    assert "'<|im_end|>' (EOS)" in out.getvalue()


def test_colour_terminal_uses_styles_not_guillemets():
    tok = _tokenizer("qwen2.5-instruct")
    views = token_view(CHAT, tok, train_on="last")
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=80)
    print_token_view(views, tok, console)
    out = console.file.getvalue()
    assert OPEN not in out and "\x1b[" in out
    assert marked_text(views).count(OPEN) == 1  # train_on="last": one trained run


def test_appended_eos_is_shown_as_a_trained_token():
    tok = AutoTokenizer.from_pretrained(fixture_tokenizer_dir("phi-3-mini-instruct"))
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    views = token_view(CHAT, tok)
    assert views[-1] == type(views[-1])(tok.eos_token_id, tok.eos_token, True)
    assert marked_text(views).endswith(tok.eos_token + CLOSE)
