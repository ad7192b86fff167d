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
