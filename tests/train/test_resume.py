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
from tunesmith.runs import COMPLETE_MARKER
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
if mode == "slow":
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
recipe.train(run_config(Path({root!r}), {name!r}, *{settings!r}))
"""


def start_child(root: Path, name: str, mode: str) -> subprocess.Popen:
    code = CHILD.format(threads=torch.get_num_threads(), mode=mode, root=str(root), name=name, settings=SETTINGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}  # this checkout
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
    deadline = time.time() + 60
    while ckpt.latest_complete(config.run_dir) is None:
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 60 s"
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
