"""The demo is `tunesmith run` on the built-in example. The real-model path trains for minutes
(`make demo` runs it); here the --tiny path's data stages run for real, and the whole tiny path's
closing screen is checked on a short training."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tunesmith import demo
from tunesmith.pipeline import DONE


@pytest.fixture
def example_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the example (read-only link) and nothing else."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "text2sql").symlink_to(repo / "examples" / "text2sql", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_tiny_demo_runs_the_data_stages_of_the_pipeline(example_checkout: Path) -> None:
    """Builds the tiny model, checks, cleans and splits the 3,000 rows; no training."""
    result = demo.run_demo(train=False, tiny=True, console=Console(quiet=True))
    assert result.stopped is None
    assert {name: e["status"] for name, e in result.ledger["stages"].items()} == {
        "check": DONE,
        "clean": DONE,
        "split": DONE,
    }
    clean = result.run_dir / "data" / "clean.jsonl"
    assert clean.is_file() and 2500 < len(clean.read_text().splitlines()) < 3000
    split = result.run_dir / "data" / "split"
    assert sum(len((split / f).read_text().splitlines()) for f in ("train.jsonl", "val.jsonl", "test.jsonl")) > 2500
