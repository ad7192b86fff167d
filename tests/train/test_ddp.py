"""Real 2-process data parallel on CPU (gloo), launched with torchrun.

`accelerate launch --cpu --num_processes 2` starts a single process on CPU (measured), so torchrun
it is. Both ranks must end with identical weights, and those must equal single-process training
on the same effective batch up to float summation order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_recipe import metrics, run_config, tiny_inputs
from tunesmith.train import recipe

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ("train.method=full", "train.lr=1e-3", "train.epochs=1")

# Each rank saves the weights it ends with, before the best checkpoint is exported.
CHILD = """
import json
from pathlib import Path
from safetensors.torch import save_file
from tests.train.test_recipe import run_config
from tunesmith.train import recipe

real_finish = recipe._finish
def finish(session, run, reason, merge):
    rank, out = session.accelerator.process_index, Path({out!r})
    save_file({{n: p.detach().clone() for n, p in run.model.named_parameters()}}, str(out / f"rank{{rank}}.safetensors"))
    info = {{"type": session.accelerator.distributed_type.value, "processes": session.accelerator.num_processes}}
    (out / f"rank{{rank}}.json").write_text(json.dumps(info))
    return real_finish(session, run, reason, merge)
recipe._finish = finish
recipe.train(run_config(Path({root!r}), "ddp", *{settings!r}))
"""


def run_two_ranks(script: Path, **env: str) -> None:
    """`torchrun` with 2 CPU ranks (gloo) on `script`, importing this checkout's src (not an installed
    copy); fails the test with the ranks' output when they fail, skips it without torchrun."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    path = os.pathsep.join([str(REPO / "src"), str(REPO)])
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path: Path, monkeypatch):
    tiny_inputs(tmp_path)
    out = tmp_path / "weights"
    out.mkdir()
    script = tmp_path / "ddp_child.py"
    script.write_text(CHILD.format(out=str(out), root=str(tmp_path), settings=SETTINGS))
    run_two_ranks(script)
    for rank in (0, 1):  # really data parallel, not two independent single-process runs
        assert json.loads((out / f"rank{rank}.json").read_text()) == {"type": "MULTI_CPU", "processes": 2}

    # Single process, same config and effective batch (accumulation 2 instead of 2 ranks x 1).
    captured = {}
    real_finish = recipe._finish

    def finish(session, run, reason, merge):
        captured.update({n: p.detach().clone() for n, p in run.model.named_parameters()})
        return real_finish(session, run, reason, merge)

    monkeypatch.setattr(recipe, "_finish", finish)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank
    try:
        single = recipe.train(run_config(tmp_path, "single", *SETTINGS))
    finally:
        torch.set_num_threads(threads)

    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0), "ranks disagree"
    initial = load_file(Path(run_config(tmp_path, "x").model.name_or_path) / "model.safetensors")
    for name, tensor in captured.items():
        assert not torch.equal(tensor, initial[name]), f"{name} did not train"
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    ddp_rows = metrics(tmp_path / "runs" / "ddp")
    single_rows = metrics(single.run_dir)
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows]
    for a, b in zip(ddp_rows, single_rows):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
    assert json.loads((tmp_path / "runs" / "ddp" / "manifest.json").read_text())["hardware"]["processes"] == 2


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_shipped_accelerate_configs_load_and_leave_accumulation_to_tunesmith(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    from tunesmith import accelerate_configs

    config = load_config_from_file(str(accelerate_configs.path(name)))
    assert config.distributed_type.value == ("FSDP" if name == "fsdp" else "DEEPSPEED")
    if name.startswith("deepspeed"):
        # tunesmith accumulates itself (trained-token normalisation); DeepSpeed must not do it again.
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    else:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # checkpoints gather weights
    with pytest.raises(ValueError, match="unknown accelerate config"):
        accelerate_configs.path("zero4")
