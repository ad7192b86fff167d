"""Every CLI command walked through its failure paths: one message naming the file, the documented
exit code (2: unreadable input/config or an output that cannot be written; 3: a bug, with a log
file), and never a traceback on the terminal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.train.test_recipe import tiny_inputs
from tunesmith.cli.errors import EXIT_INTERNAL, EXIT_UNREADABLE, LOG_DIR_ENV
from tunesmith.cli.main import app

runner = CliRunner()
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Inputs every case can point at: data, a model, and things that look like them but are not."""
    root = tmp_path_factory.mktemp("cli-errors")
    model, data = tiny_inputs(root)
    blocker = root / "a-regular-file"
    blocker.write_text("x")
    not_tokenizer = root / "not-a-tokenizer"
    not_tokenizer.mkdir()
    (not_tokenizer / "notes.txt").write_text("nothing to load here")
    no_weights = root / "no-weights"
    shutil.copytree(model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    pickled = root / "pickled"
    shutil.copytree(no_weights, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not even a real pickle")
    latin1 = root / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    return {
        "root": root,
        "data": data,
        "model": model,
        "blocker": blocker,
        "not_tokenizer": not_tokenizer,
        "no_weights": no_weights,
        "pickled": pickled,
        "latin1": latin1,
        "data_bytes": data.read_bytes(),
    }


def _train(world: dict[str, Path], name: str, *overrides: str) -> list[str]:
    return [
        "train",
        f"name={name}",
        f"runs_dir={world['root'] / 'runs'}",
        f"model.name_or_path={world['model']}",
        f"data.path={world['data']}",
        "train.report_to=[]",
        "split.embedder=none",  # templated tiny data: lexical groups are enough, and no embedder to load
        *overrides,
    ]


# (id, argv builder, text the message must hold). Each one exits 2.
CASES = [
    ("convert missing input", lambda w: ["data", "convert", str(w["root"] / "nope.jsonl"), "-o", str(w["root"] / "o.jsonl")], "no such file"),
    ("convert a directory", lambda w: ["data", "convert", str(w["root"]), "-o", str(w["root"] / "o.jsonl")], "is a directory"),
    ("convert -o IN", lambda w: ["data", "convert", str(w["data"]), "-o", str(w["data"])], "would overwrite input"),
    ("convert -o under a file", lambda w: ["data", "convert", str(w["data"]), "-o", str(w["blocker"] / "o.jsonl")], "is a file, not a directory"),
    ("check tokenizer missing", lambda w: ["data", "check", str(w["data"]), "-t", "/nonexistent"], "/nonexistent"),
    ("check not a tokenizer", lambda w: ["data", "check", str(w["data"]), "-t", str(w["not_tokenizer"])], "cannot load a tokenizer"),
    ("check --report impossible", lambda w: ["data", "check", str(w["data"]), "--report", str(w["blocker"] / "r.json")], "is a file, not a directory"),
    ("check --report over input", lambda w: ["data", "check", str(w["data"]), "--report", str(w["data"])], "would overwrite input"),
    ("check config a directory", lambda w: ["data", "check", str(w["data"]), "--config", str(w["root"])], "is a directory"),
    ("check config not UTF-8", lambda w: ["data", "check", str(w["data"]), "--config", str(w["latin1"])], "not UTF-8"),
    ("clean -o X --rejects X", lambda w: ["data", "clean", str(w["data"]), "-o", str(w["root"] / "x.jsonl"), "--rejects", str(w["root"] / "x.jsonl")], "is the same file as --output"),
    ("clean -o IN", lambda w: ["data", "clean", str(w["data"]), "-o", str(w["data"]), "--rejects", str(w["root"] / "r.jsonl")], "would overwrite input"),
    ("clean tokenizer missing", lambda w: ["data", "clean", str(w["data"]), "-o", str(w["root"] / "c.jsonl"), "--rejects", str(w["root"] / "r.jsonl"), "-t", "/nonexistent"], "/nonexistent"),
    ("show tokenizer missing", lambda w: ["data", "show", str(w["data"]), "-t", "/nonexistent"], "/nonexistent"),
    ("show not a tokenizer", lambda w: ["data", "show", str(w["data"]), "-t", str(w["not_tokenizer"])], "cannot load a tokenizer"),
    ("show --train-on lst", lambda w: ["data", "show", str(w["data"]), "-t", str(w["model"]), "--train-on", "lst"], "Invalid value for '--train-on': Value error, 'lst' is not one of"),
    ("tiny under a file", lambda w: ["model", "tiny", str(w["blocker"] / "m")], "a-regular-file"),
    ("tiny --texts missing", lambda w: ["model", "tiny", str(w["root"] / "m"), "--texts", str(w["root"] / "nope.jsonl")], "nope.jsonl"),
    ("tiny --arch bogus", lambda w: ["model", "tiny", str(w["root"] / "m"), "--arch", "bogus"], "'bogus' is not one of"),
    ("llama2c missing", lambda w: ["model", "convert-llama2c", "/nope.bin", "/nope-tok.bin", str(w["root"] / "l")], "/nope.bin"),
    ("llama2c not llama2c", lambda w: ["model", "convert-llama2c", str(w["blocker"]), str(w["blocker"]), str(w["root"] / "l")], "too short for a llama2.c checkpoint"),
    ("train config a directory", lambda w: ["train", str(w["root"])], "is a directory"),
    ("train config not UTF-8", lambda w: ["train", str(w["latin1"])], "not UTF-8"),
    ("train lr negative", lambda w: _train(w, "neg", "train.lr=-1e-3"), "train.lr: Input should be greater than 0"),
    ("train lr zero", lambda w: _train(w, "zero", "train.lr=0"), "train.lr: Input should be greater than 0"),
    ("train effective < micro", lambda w: _train(w, "eb", "train.effective_batch=2", "train.micro_batch=4"), "smaller than micro_batch"),
    ("train model missing", lambda w: _train(w, "missing", f"model.name_or_path={w['root'] / 'nope'}"), "no such directory"),
    ("train model without weights", lambda w: _train(w, "noweights", f"model.name_or_path={w['no_weights']}"), "no model.safetensors"),
    ("train pickle-only weights", lambda w: _train(w, "pickled", f"model.name_or_path={w['pickled']}"), "only pickled weights"),
    ("train data missing", lambda w: _train(w, "nodata", f"data.path={w['root'] / 'nope.jsonl'}"), "no such file"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_expected_failure_is_one_message_and_exit_2(world, case):
    _, argv, expected = case
    result = runner.invoke(app, argv(world))
    assert result.exit_code == EXIT_UNREADABLE, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # nothing escaped the handlers
    assert expected in " ".join(result.output.split()), result.output  # rich wraps long lines
    # A failed train leaves no run directory behind (it would hold only config and manifest).
    if argv(world)[0] == "train" and len(argv(world)) > 2:
        name = next(a for a in argv(world) if a.startswith("name=")).removeprefix("name=")
        assert not (world["root"] / "runs" / name).exists()


def test_the_inputs_survive_every_refused_command(world):
    # Runs after the cases above (file order): not one refused command touched its input.
    assert world["data"].read_bytes() == world["data_bytes"]


def test_train_outside_the_repository_fails_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # there is no default model or data: a config must name both
    result = runner.invoke(app, ["train"])
    assert result.exit_code == EXIT_UNREADABLE, result.output
    assert "Traceback" not in result.output and "model.name_or_path: required" in result.output
    assert list(tmp_path.iterdir()) == []  # not even an empty runs/


def test_an_unwritable_output_is_exit_2(world, monkeypatch):
    """Running as root makes chmod meaningless, so the refusal comes from the OS call itself."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir") or args[0])

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = world["root"] / "ro" / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(world["data"]), "-o", str(out)])
    assert result.exit_code == EXIT_UNREADABLE, result.output
    assert "permission denied" in result.output and str(out.parent) in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_exit_2(world, tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = runner.invoke(app, ["data", "convert", str(world["data"]), "-o", str(ro / "o.jsonl")])
    finally:
        ro.chmod(0o700)
    assert result.exit_code == EXIT_UNREADABLE and "permission denied" in result.output


def test_an_unexpected_error_is_exit_3_with_the_traceback_in_a_log(world, tmp_path: Path, monkeypatch):
    import tunesmith.data.convert as convert

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(convert, "convert_file", broken)
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    result = runner.invoke(app, ["data", "convert", str(world["data"]), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert "Traceback" not in result.output and "internal error: ZeroDivisionError: a bug" in result.output
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in " ".join(result.output.split()).replace(" ", "") or log.name in result.output
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError: a bug" in text and "def broken" not in text and "broken" in text


def test_a_full_disk_is_exit_2_and_leaves_no_partial_output(world, tmp_path: Path, monkeypatch):
    import errno

    import tunesmith.runs as runs

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", str(world["data"]), "-o", str(out)])
    assert result.exit_code == EXIT_UNREADABLE, result.output
    assert "no space left on device" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


@pytest.mark.slow  # a fresh interpreter importing torch, transformers and peft: ~6 s of CPU
def test_importing_the_training_stack_prints_no_bitsandbytes_noise():
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-c", "import tunesmith.models.adapters"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "kernels-community" not in done.stderr
