import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from tests.conftest import tiny_llama
from tunesmith.runs import COMPLETE_MARKER
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.checkpoint import TrainState


def one_step(model, optimizer, scheduler):
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def trained_setup(run_dir: Path, step: int = 3):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    for _ in range(step):
        one_step(model, optimizer, scheduler)
    state = TrainState(
        step=step,
        epoch=1,
        batch_in_epoch=4,
        micro_batch=2,
        accumulation=2,
        guard={"best_step": step},
        metrics=[{"step": 1, "loss": 4.2}],
    )
    return model, optimizer, scheduler, state


def test_checkpoint_holds_exactly_the_expected_files_and_round_trips(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path)
    path = ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    assert path == tmp_path / "checkpoints" / "step-3"
    expected = [
        ckpt.WEIGHTS_FILE,
        ckpt.OPTIMIZER_FILE,
        ckpt.SCHEDULER_FILE,
        ckpt.RNG_FILE.format(rank=0),
        ckpt.STATE_FILE,
        ckpt.CHECKSUMS_FILE,
    ]
    assert sorted(p.name for p in path.iterdir()) == sorted([*expected, COMPLETE_MARKER])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]  # staging renamed away
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    # A fresh model/optimizer/scheduler takes the saved state; the RNG streams continue identically.
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    loaded = ckpt.load_checkpoint(ckpt.latest_complete(tmp_path))
    fresh = tiny_llama(seed=1)
    ckpt.apply_weights(fresh, loaded.weights)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    # Order matters: building the scheduler sets the LR for step 0, loading the optimizer puts back the saved one.
    sched2 = get_cosine_schedule_with_warmup(opt2, 2, 10)
    opt2.load_state_dict(loaded.optimizer)
    sched2.load_state_dict(loaded.scheduler)
    assert sched2.get_last_lr() == scheduler.get_last_lr()
    assert loaded.state == state
    ckpt.set_rng_state(loaded.rng)
    draws = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1] and torch.equal(draws[2], expected_draws[2])

    # ...and one more step on both gives identical parameters (optimizer moments restored).
    torch.manual_seed(5)
    one_step(model, optimizer, scheduler)
    torch.manual_seed(5)
    one_step(fresh, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_every_file_loads_without_pickle(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=1)
    path = ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    pickled = sorted(f.name for f in path.glob("*.pt"))
    # The list is checked first: a glob that finds nothing would make the loop below vacuous.
    assert pickled == sorted([ckpt.OPTIMIZER_FILE, ckpt.SCHEDULER_FILE, ckpt.RNG_FILE.format(rank=0)])
    for name in pickled:
        torch.load(path / name, weights_only=True)  # raises UnpicklingError on anything but tensors/plain types


def test_checkpoint_without_marker_is_never_loaded(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=2)
    good = ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    # A save killed before its marker: renamed-looking and staging leftovers, both with all other files.
    for name in ("step-4", ".tmp-step-6"):
        broken = tmp_path / "checkpoints" / name
        broken.mkdir()
        for f in good.iterdir():
            if f.name != COMPLETE_MARKER:
                (broken / f.name).write_bytes(f.read_bytes())
    assert ckpt.latest_complete(tmp_path) == good
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-4")
    # The next save clears staging leftovers and replaces the unmarked step-4.
    state.step = 4
    redone = ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert ckpt.latest_complete(tmp_path) == redone and ckpt.load_checkpoint(redone).state.step == 4


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=0)
    for step in range(1, 6):
        state.step = step
        ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    removed = ckpt.rotate(tmp_path, keep=2, best_step=2)
    assert sorted(p.name for p in removed) == ["step-1", "step-3"]
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-2", "step-4", "step-5"]
    # The best being the newest keeps just `keep` checkpoints.
    ckpt.rotate(tmp_path, keep=1, best_step=5)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-5"]


def test_lora_checkpoint_holds_only_the_adapters(tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 10)
    one_step(model, optimizer, scheduler)
    path = ckpt.save_checkpoint(tmp_path, TrainState(step=1), model=model, optimizer=optimizer, scheduler=scheduler)
    weights = ckpt.load_checkpoint(path).weights
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(weights) == n_trainable and all("lora_" in name for name in weights)

    other = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"))
    ckpt.apply_weights(other, weights)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_weights_for_another_model_are_refused(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=1)
    path = ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    weights = {f"renamed.{k}": v for k, v in ckpt.load_checkpoint(path).weights.items()}
    with pytest.raises(ValueError, match="do not fit this model"):
        ckpt.apply_weights(tiny_llama(), weights)


def _three_checkpoints(tmp_path: Path):
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=0)
    for step in (2, 4, 6):
        state.step = step
        ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    return model, optimizer, scheduler, state


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete"])
def test_a_damaged_newest_checkpoint_is_set_aside_for_the_newest_intact_one(tmp_path: Path, damage: str):
    _three_checkpoints(tmp_path)
    weights = ckpt.step_path(tmp_path, 6) / ckpt.WEIGHTS_FILE
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "overwrite":  # same size, other bytes: only the checksum can tell
        data = bytearray(weights.read_bytes())
        data[-8:] = b"\xff" * 8
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    assert ckpt.verify(ckpt.step_path(tmp_path, 4)) is None
    assert ckpt.verify(ckpt.step_path(tmp_path, 6)) is not None
    path, notes = ckpt.latest_intact(tmp_path)
    assert path == ckpt.step_path(tmp_path, 4)
    assert len(notes) == 1 and "step-6 is damaged" in notes[0] and ckpt.WEIGHTS_FILE in notes[0]
    assert ckpt.load_checkpoint(path).state.step == 4
    # Set aside, not deleted, and out of the way of resume and rotation.
    assert (tmp_path / "checkpoints" / "step-6.corrupt").is_dir()
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-2", "step-4"]


@pytest.mark.parametrize("how", ["ENOSPC", "torch-zip-writer"])
def test_disk_full_during_a_save_names_the_last_complete_checkpoint(tmp_path: Path, monkeypatch, how: str):
    import errno
    import shutil
    from collections import namedtuple

    model, optimizer, scheduler, state = _three_checkpoints(tmp_path)

    def full_disk(obj, path):
        Path(path).write_bytes(b"PK" * 100)  # part of the file made it, then the disk filled up
        if how == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        # What torch.save(obj, "path") raises on a full disk: no errno, only its zip writer's complaint.
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt, "_torch_save", full_disk)
    if how != "ENOSPC":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    state.step = 8
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    message = str(info.value)
    assert "no space left on device" in message and "last complete checkpoint is step 6" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    assert all(ckpt.verify(p) is None for p in ckpt.complete_checkpoints(tmp_path))


def test_a_short_safetensors_write_is_caught(tmp_path: Path, monkeypatch):
    """safetensors reports success writing to /dev/full; the size check catches what it did not write."""
    model, optimizer, scheduler, state = trained_setup(tmp_path, step=1)
    real = ckpt.save_file

    def short_write(tensors, path):
        real(tensors, path)
        Path(path).write_bytes(Path(path).read_bytes()[:-4])

    monkeypatch.setattr(ckpt, "save_file", short_write)
    with pytest.raises(ckpt.CheckpointWriteError, match="bytes written of"):
        ckpt.save_checkpoint(tmp_path, state, model=model, optimizer=optimizer, scheduler=scheduler)
    assert ckpt.complete_checkpoints(tmp_path) == []
