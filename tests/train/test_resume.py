"""A run killed with SIGKILL, then resumed, ends bit-equal to one never interrupted (CPU, fp32).

The interrupted runs are real subprocesses killed with signal 9: nothing in them gets to clean up.
LoRA dropout is on, so the resumed run must also restore the RNG streams to match.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_recipe import metrics, run_config, tiny_inputs
from tunesmith.runs import COMPLETE_MARKER, SUMMARY_FILE, RunError
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.recipe import train

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ("lora.dropout=0.1", "lora.r=4")
LAST_STEP = 18  # 43 examples, 8 per step, 3 epochs (see test_recipe)

# Run in a subprocess: "slow" sleeps in every loss call so the parent can kill it mid-run;
# "die-in-save" SIGKILLs itself inside the second checkpoint save, after every file is written
# but before the completion marker.
CHILD = """
import os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads({threads})
from tests.train.test_recipe import run_config
from tunesmith.train import checkpoint as ckpt, recipe

mode = {mode!r}
if mode in ("slow", "cli"):
    real_loss = recipe.trained_token_loss
    def slow_loss(*args, **kwargs):
        time.sleep(0.05)
        return real_loss(*args, **kwargs)
    recipe.trained_token_loss = slow_loss
else:
    real_commit, commits = ckpt.commit, []
    def dying_commit(staging):
        commits.append(staging)
        if len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_commit(staging)
    ckpt.commit = dying_commit
config = run_config(Path({root!r}), {name!r}, *{settings!r})
if mode == "cli":  # the real command, its signal handling and exit code
    from tunesmith.cli.main import app
    from tunesmith.config import dump_config
    path = Path({root!r}) / ({name!r} + ".yaml")
    path.write_text(dump_config(config))
    app(["train", str(path)])
else:
    recipe.train(config)
"""


def start_child(root: Path, name: str, mode: str) -> subprocess.Popen:
    code = CHILD.format(threads=torch.get_num_threads(), mode=mode, root=str(root), name=name, settings=SETTINGS)
    # The checkout's own src first: an installed tunesmith elsewhere (another checkout) must not answer.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(inputs root, run dir) of the uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    tiny_inputs(root)
    config = run_config(root, "uninterrupted", *SETTINGS)
    train(config)
    return root, config.run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    a = ckpt.load_checkpoint(ckpt.step_path(run_dir, LAST_STEP)).weights
    b = ckpt.load_checkpoint(ckpt.step_path(reference, LAST_STEP)).weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "last-step weights differ"
    final_a, final_b = (load_file(d / "final" / "adapter_model.safetensors") for d in (run_dir, reference))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b), "exported best adapters differ"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics(run_dir)) == strip(metrics(reference))  # same losses, one row per step, nothing doubled


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_the_uninterrupted_run(reference):
    root, ref_dir = reference
    config = run_config(root, "killed", *SETTINGS)
    child = start_child(root, "killed", "slow")
    deadline = time.time() + 180  # generous: a loaded machine starts torch slowly
    while ckpt.latest_complete(config.run_dir) is None:
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    assert child.poll() is None  # still training when killed
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    interrupted_at = ckpt.checkpoint_step(ckpt.latest_complete(config.run_dir))
    assert interrupted_at < LAST_STEP

    result = train(config, resume=True)
    assert result.steps == LAST_STEP
    assert_same_run(config.run_dir, ref_dir)


@pytest.mark.slow
def test_checkpoint_killed_mid_save_is_ignored_on_resume(reference):
    root, ref_dir = reference
    config = run_config(root, "killed-in-save", *SETTINGS)
    child = start_child(root, "killed-in-save", "die-in-save")
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-3000:]
    # The second save (step 6) got every file written but not its marker; step 3 is the last complete one.
    staging = ckpt.staging_path(config.run_dir, 6)
    assert staging.is_dir() and not (staging / COMPLETE_MARKER).exists()
    assert (staging / ckpt.WEIGHTS_FILE).is_file() and (staging / ckpt.STATE_FILE).is_file()
    assert ckpt.latest_complete(config.run_dir) == ckpt.step_path(config.run_dir, 3)

    train(config)  # train.resume=auto: continues from step 3, never from the unmarked step 6
    assert not staging.exists()
    assert_same_run(config.run_dir, ref_dir)


def wait_for_checkpoint(child: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.time() + 180  # generous: a loaded machine starts torch slowly
    while ckpt.latest_complete(run_dir) is None:
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_130_and_resume_equals_the_uninterrupted_run(reference):
    import json

    root, ref_dir = reference
    config = run_config(root, "sigterm", *SETTINGS)
    child = start_child(root, "sigterm", "cli")
    wait_for_checkpoint(child, config.run_dir)
    # A second run into the same directory, meanwhile, is refused and told who holds it.
    with pytest.raises(RunError, match=rf"in use: `train` by pid {child.pid} on "):
        train(config)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    err = err.decode()
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    step = ckpt.checkpoint_step(ckpt.latest_complete(config.run_dir))
    assert 3 <= step < LAST_STEP
    # The step in progress was finished and saved, not thrown away: a checkpoint exactly at the step reported.
    assert f"interrupted at step {step};" in err and "`--resume` continues" in err
    summary = json.loads((config.run_dir / SUMMARY_FILE).read_text())
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == step
    assert len([m for m in metrics(config.run_dir) if "loss" in m]) == step  # nothing logged past the checkpoint

    result = train(config, resume=True)
    assert result.steps == LAST_STEP
    assert_same_run(config.run_dir, ref_dir)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, capsys):
    import shutil

    root, ref_dir = reference
    config = run_config(root, "corrupt", *SETTINGS)
    shutil.copytree(ref_dir, config.run_dir)
    kept = [ckpt.checkpoint_step(p) for p in ckpt.complete_checkpoints(config.run_dir)]
    newest = ckpt.step_path(config.run_dir, kept[-1])
    weights = newest / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated

    result = train(config, resume=True)
    out = capsys.readouterr().out
    flat = "".join(out.split())  # rich folds long lines (paths) at the console width, which varies
    assert f"checkpointstep-{kept[-1]}isdamaged" in flat and f"step-{kept[-2]}" in flat
    assert (config.run_dir / "checkpoints" / f"step-{kept[-1]}.corrupt").is_dir()
    assert result.steps == LAST_STEP
    assert_same_run(config.run_dir, ref_dir)  # redone from the intact one: the same run, bit for bit
