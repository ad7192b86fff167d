"""The allocator training runs under: found, chosen, preloaded by re-executing once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import allocator
from tunesmith.config import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def fake_lib_dir(tmp_path, monkeypatch):
    """Only `tmp_path` is searched for libraries."""
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [tmp_path])
    monkeypatch.delenv(allocator.ENV, raising=False)
    return tmp_path


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_system(fake_lib_dir):
    assert allocator.choose() is None
    (fake_lib_dir / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.choose() == ("jemalloc", fake_lib_dir / "libjemalloc.so.2")
    (fake_lib_dir / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.choose("auto") == ("tcmalloc", fake_lib_dir / "libtcmalloc_minimal.so.4")
    assert allocator.choose("jemalloc")[0] == "jemalloc"
    assert allocator.choose("system") is None


def test_an_allocator_asked_for_by_name_must_exist(fake_lib_dir, monkeypatch):
    with pytest.raises(ConfigError, match="no jemalloc library found.*apt-get install libjemalloc2"):
        allocator.choose("jemalloc")
    monkeypatch.setenv(allocator.ENV, "mimalloc")
    with pytest.raises(ConfigError, match="expected auto, tcmalloc, jemalloc or system"):
        allocator.choose()


def test_the_environment_preloads_the_library_and_keeps_earlier_preloads(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    env = allocator.environment("jemalloc", lib, {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{lib}:/opt/other.so"
    assert env["MALLOC_CONF"] == allocator.JEMALLOC_CONF
    assert env["PATH"] == "/bin"
    mine = allocator.environment("jemalloc", lib, {"MALLOC_CONF": "narenas:1"})
    assert mine["MALLOC_CONF"] == "narenas:1"  # the user's own settings win
    assert "MALLOC_CONF" not in allocator.environment("tcmalloc", lib, {})


def _run(code: str, **env: str) -> str:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, "TUNESMITH_ALLOCATOR_LOADED")
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


REEXEC = "import sys; from tunesmith import allocator; allocator.reexec(); print(allocator.loaded(), sys.argv[1:])"


@pytest.mark.parametrize("name", ["jemalloc", "tcmalloc"])
def test_reexec_runs_the_same_command_under_the_allocator(name):
    if allocator.find(name) is None:
        pytest.skip(f"{name} is not installed here (Debian: libjemalloc2 / libtcmalloc-minimal4)")
    assert _run(REEXEC, TUNESMITH_ALLOCATOR=name) == f"{name} []"


def test_system_means_no_reexec():
    assert _run(REEXEC, TUNESMITH_ALLOCATOR="system") == "None []"


def test_the_console_script_reexecs_training_commands_only_and_says_what_is_wrong():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env |= {"PYTHONPATH": str(SRC), allocator.ENV: "mimalloc"}
    bad = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli.main", "train", "--help"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "TUNESMITH_ALLOCATOR='mimalloc': expected auto, tcmalloc, jemalloc or system" in bad.stderr
    assert "Traceback" not in bad.stderr
    other = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli.main", "plan", "--help"], env=env, capture_output=True, text=True
    )
    assert other.returncode == 0  # not a training command: the allocator is never looked at


def test_the_plan_assumes_the_allocator_training_will_run_under(fake_lib_dir, monkeypatch):
    monkeypatch.setattr(allocator, "loaded", lambda: None)
    assert allocator.planned() == "system"
    (fake_lib_dir / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.planned() == "tcmalloc"
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.planned() == "system"
    monkeypatch.setattr(allocator, "loaded", lambda: "jemalloc")
    assert allocator.planned() == "jemalloc"  # a process already under one plans for that one
