"""The recipe end to end on a tiny Llama and a learnable task (a fixed word-to-colour mapping).

Helpers here (`tiny_inputs`, `run_config`) are shared by test_resume.py and test_ddp.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import chat_row, read_jsonl, write_jsonl
from tunesmith.config import Config, ConfigError, load_config
from tunesmith.runs import CONFIG_FILE, FINAL_DIR, MANIFEST_FILE, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR
from tunesmith.train import checkpoint as ckpt
from tunesmith.train import recipe
from tunesmith.train.guards import OVERFITTING, TrainingStopped
from tunesmith.train.recipe import train

WORDS = ["apple", "sky", "grass", "snow", "coal", "sun", "rose", "sea", "leaf", "ash", "milk", "plum"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "red", "blue", "green", "grey", "white", "purple"]


def write_data(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Questions with a fixed answer per word: learnable in a few dozen steps by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(WORDS))
        pad = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))  # varied lengths
        rows.append(chat_row(f"{pad} what colour is {WORDS[i]}?", COLOURS[i]))
    return write_jsonl(path, rows)


def tiny_inputs(root: Path) -> tuple[Path, Path]:
    """(model dir, data file) under root, built once per root."""
    from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl

    data = root / "data.jsonl"
    model = root / "model"
    if not (model / "config.json").exists():
        write_data(data)
        build_tiny_model(
            model,
            texts=texts_from_jsonl(data),
            vocab_size=320,
            hidden_size=32,
            layers=2,
            heads=2,
            kv_heads=1,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    return model, data


# The colour questions are one template, hence one paraphrase group to an embedder: split them
# lexically (MinHash), and keep no test set: 43 train and 5 validation rows, as before the split stage.
LEXICAL_SPLIT = [
    "split.embedder=none",
    "split.test=0",
    "split.seed=1",  # its 5 validation rows ask 5 different colours (seed 0: three ask for coal)
]


def run_config(root: Path, name: str, *overrides: str) -> Config:
    model, data = tiny_inputs(root)
    base = [
        f"name={name}",
        f"runs_dir={root / 'runs'}",
        f"model.name_or_path={model}",
        f"data.path={data}",
        "model.dtype=float32",
        "train.epochs=3",
        "train.effective_batch=8",
        "train.micro_batch=4",
        "train.lr=1e-2",
        "train.eval_every=0.5",
        "train.early_stopping_patience=0",
        "train.report_to=[]",
        *LEXICAL_SPLIT,
    ]
    return load_config(overrides=base + list(overrides))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    tiny_inputs(root)
    return root


def metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / METRICS_FILE)


def test_full_finetuning_learns_and_changes_every_weight(inputs: Path):
    from transformers import AutoModelForCausalLM

    config = run_config(inputs, "full", "train.method=full")
    result = train(config)
    rows = metrics(config.run_dir)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    train_losses = [r["loss"] for r in rows if "loss" in r]
    # Learned: validation loss well below the start, training loss too (first vs last quarter).
    assert val[-1] < 0.7 * val[0]
    q = len(train_losses) // 4
    assert sum(train_losses[-q:]) < 0.7 * sum(train_losses[:q])
    before = AutoModelForCausalLM.from_pretrained(config.model.name_or_path).state_dict()
    after = load_file(result.final_dir / "model.safetensors")
    assert set(after) <= set(before) and len(after) >= len(before) - 1  # the tied head is stored once
    assert [n for n, t in after.items() if torch.equal(t, before[n])] == []


def test_lora_run_directory_holds_the_best_adapter_and_the_evidence(inputs: Path):
    # (A random tiny model barely learns through LoRA: its frozen head's logits are ~0.02 in scale.
    # Learning is checked on full fine-tuning above; here, what LoRA leaves behind.)
    config = run_config(inputs, "lora", "train.report_to=[tensorboard]", "lora.r=8", "lora.dropout=0.1")
    result = train(config, merge=True)
    run_dir = config.run_dir
    val = [r for r in metrics(run_dir) if "val_loss" in r]
    # 43 train examples in micro-batches of 4 = 11 per epoch; 2 per step = 6 steps per epoch, 18 in all;
    # validation every round(0.5 x 6) = 3 steps.
    assert result.steps == 18 and [r["step"] for r in val] == [3, 6, 9, 12, 15, 18]
    assert result.stop_reason == "completed" and (result.micro_batch, result.accumulation) == (4, 2)
    # The best checkpoint is the lowest validation loss, and that is what final/ holds.
    best = min(val, key=lambda r: r["val_loss"])
    assert result.best_step == best["step"] and result.best_val_loss == pytest.approx(best["val_loss"])
    best_weights = ckpt.load_checkpoint(ckpt.step_path(run_dir, result.best_step)).weights
    final = run_dir / FINAL_DIR
    exported = load_file(final / "adapter_model.safetensors")
    # Adapters, plus the embedding rows of the stop token (<|im_end|>) that LoRA trains too.
    assert len(exported) == len(best_weights) and all(("lora_" in n) != ("trainable_tokens" in n) for n in best_weights)
    assert sum("trainable_tokens" in n for n in best_weights) == 1
    for name, tensor in best_weights.items():  # peft drops the adapter name when it saves
        assert torch.equal(exported[name.replace(".default", "")], tensor), name
    assert all(t.abs().sum() > 0 for n, t in exported.items() if "lora_B" in n)  # B starts at zero: every one trained
    for name in ("adapter_config.json", "tokenizer.json", "generation_config.json"):
        assert (final / name).is_file(), name
    # Rotation: the newest `keep_checkpoints` (2) plus the best, complete ones only.
    kept = {ckpt.checkpoint_step(p) for p in ckpt.complete_checkpoints(run_dir)}
    assert kept == {15, 18, result.best_step}
    # Run files: resolved config, manifest with the data fingerprint, curves, summary, TensorBoard.
    assert load_config(run_dir / CONFIG_FILE) == config
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["data"]["sha256"] == hashlib.sha256(Path(config.data.path).read_bytes()).hexdigest()
    assert manifest["data"]["rows"] == 48 and manifest["versions"]["torch"] == torch.__version__
    assert (run_dir / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["best_step"] == result.best_step and summary["final_dir"] == str(final)
    assert list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    # --merge: a plain transformers model that computes what base + adapter compute.
    assert_merged_matches_adapter(config.model.name_or_path, final)


def assert_merged_matches_adapter(base_dir, final: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(final / ckpt.MERGED_DIR)
    assert "quantization_config" not in json.loads((final / ckpt.MERGED_DIR / "config.json").read_text())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), final)
    ids = torch.arange(3, 40).reshape(1, -1)
    torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)


def poison_at(monkeypatch, call: int, *, grad: bool = False) -> None:
    """Make the `call`-th loss computation (1-based) NaN, or its gradient NaN with a finite loss."""

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * math.nan

    real, calls = recipe.trained_token_loss, [0]

    def poisoned(model, batch, *, normalizer):
        loss, n = real(model, batch, normalizer=normalizer)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == call:
                loss = NanGrad.apply(loss) if grad else loss * math.nan
        return loss, n

    monkeypatch.setattr(recipe, "trained_token_loss", poisoned)


@pytest.mark.parametrize(("grad", "cause"), [(False, "loss"), (True, "grad norm")])
def test_nan_stops_with_the_last_good_checkpoint_intact(inputs: Path, monkeypatch, grad: bool, cause: str):
    # The probe is call 1; step k's two micro-batches are calls 2k and 2k+1: step 5 is poisoned,
    # after the checkpoint at step 3 (validation every 3 steps).
    poison_at(monkeypatch, 10, grad=grad)
    config = run_config(inputs, f"nan-{cause}")
    with pytest.raises(TrainingStopped) as err:
        train(config)
    assert err.value.step == 5 and err.value.cause == cause
    assert "step 5" in str(err.value) and "train.lr=" in str(err.value) and "grad_clip" in str(err.value)
    last_good = ckpt.latest_complete(config.run_dir)
    assert err.value.last_good == last_good and ckpt.checkpoint_step(last_good) == 3
    loaded = ckpt.load_checkpoint(last_good)
    assert loaded.state.step == 3 and all(torch.isfinite(t).all() for t in loaded.weights.values())
    rows = metrics(config.run_dir)
    assert rows[-1] == {"step": 5, "event": "non-finite", "cause": cause}
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)  # the poisoned step was never applied
    assert json.loads((config.run_dir / SUMMARY_FILE).read_text())["stop_reason"] == "non-finite"


def test_on_nan_retry_resumes_from_the_last_good_checkpoint_at_half_the_lr(inputs: Path, monkeypatch):
    from transformers import get_cosine_schedule_with_warmup

    poison_at(monkeypatch, 10)
    config = run_config(inputs, "retry", "train.on_nan=retry")
    result = train(config)
    assert result.stop_reason == "completed" and result.steps == 18
    rows = metrics(config.run_dir)
    assert {"step": 3, "event": "retry", "cause": "loss", "at_step": 5, "lr_scale": 0.5} in rows
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 19))  # steps 1-3 kept from before the NaN, 4-18 from the retry
    # The LR after the retry is half the planned schedule's; before it, the schedule itself.
    opt = torch.optim.SGD([torch.zeros(1)], lr=config.train.learning_rate)
    sched = get_cosine_schedule_with_warmup(opt, 1, 18)
    planned = []
    for _ in range(18):
        planned.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs = [r["lr"] for r in rows if "loss" in r]
    assert lrs[:3] == pytest.approx(planned[:3]) and lrs[3:] == pytest.approx([lr / 2 for lr in planned[3:]])


def test_early_stop_on_a_scripted_overfitting_curve_exports_the_best(inputs: Path, monkeypatch):
    curve = iter([3.0, 2.0, 1.5, 1.8, 2.1, 2.4, 2.7, 3.0])
    monkeypatch.setattr(recipe, "_evaluate", lambda *a, **k: next(curve))
    # Full fine-tuning, so the training loss falls steadily while the scripted validation loss rises.
    config = run_config(inputs, "overfit", "train.method=full", "train.early_stopping_patience=2")
    result = train(config)
    # Evaluations at steps 3, 6, 9 (best), 12, 15: two rises in a row while training loss falls.
    assert result.stop_reason == OVERFITTING and result.steps == 15
    assert (result.best_step, result.best_val_loss) == (9, 1.5)
    summary = json.loads((config.run_dir / SUMMARY_FILE).read_text())
    assert summary["stop_reason"] == OVERFITTING and "overfitting" in summary["why"]
    best = ckpt.load_checkpoint(ckpt.step_path(config.run_dir, 9)).weights
    exported = load_file(result.final_dir / "model.safetensors")
    assert all(torch.equal(exported[n], t) for n, t in best.items() if n in exported)


def test_out_of_memory_at_start_halves_the_micro_batch(inputs: Path, monkeypatch):
    real_probe = recipe._probe

    def probe(loss_model, accelerator, examples, pad_id, size):
        if size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        real_probe(loss_model, accelerator, examples, pad_id, size)

    monkeypatch.setattr(recipe, "_probe", probe)
    result = train(run_config(inputs, "oom", "train.epochs=0.5"))
    assert (result.micro_batch, result.accumulation) == (2, 4)  # effective batch still 8
    assert any("out of memory at micro_batch=4" in n for n in result.notes)


@pytest.mark.parametrize(
    ("setting", "native", "expected"),
    [("auto", True, "bf16"), ("auto", False, "fp32"), ("fp32", True, "fp32"), ("bf16", False, "bf16")],
)
def test_mixed_precision_auto_follows_the_hardware(setting: str, native: bool, expected: str, monkeypatch) -> None:
    from tunesmith.models import load

    monkeypatch.setattr(load, "native_bf16", lambda: native)
    config = Config.model_validate(
        {"model": {"name_or_path": "m"}, "data": {"path": "d.jsonl"}, "train": {"mixed_precision": setting}}
    )
    assert recipe._mixed_precision(config) == expected


def test_onednn_kernel_cache_is_capped_unless_the_user_set_it(monkeypatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    recipe._bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    recipe._bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


def test_the_manifest_records_the_compute_precision(inputs: Path):
    config = run_config(inputs, "fp32", "train.mixed_precision=no", "train.epochs=0.5")  # YAML's `no` is False
    assert config.train.mixed_precision == "fp32"
    train(config)
    manifest = json.loads((config.run_dir / MANIFEST_FILE).read_text())
    assert manifest["hardware"]["mixed_precision"] == "fp32"


def test_a_finished_run_is_not_silently_overwritten(inputs: Path):
    config = run_config(inputs, "twice", "train.epochs=0.5")
    train(config)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(config, resume=False)


def test_resuming_on_changed_data_is_refused(inputs: Path, tmp_path: Path):
    other = write_data(tmp_path / "other.jsonl", seed=1)
    config = run_config(inputs, "data-changed", "train.epochs=0.5")
    train(config)
    with pytest.raises(ConfigError, match="changed since"):
        train(run_config(inputs, "data-changed", "train.epochs=1", f"data.path={other}"), resume=True)


def test_qlora_trains_4bit_base_and_merges_into_an_unquantised_model(tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    from tunesmith.models.tiny import build_tiny_model, texts_from_jsonl

    data = write_data(tmp_path / "data.jsonl")
    # bitsandbytes' CPU 4-bit kernels quantise in blocks of 64 inputs: hidden 64 is the smallest.
    model = build_tiny_model(
        tmp_path / "model",
        texts=texts_from_jsonl(data),
        vocab_size=320,
        hidden_size=64,
        layers=2,
        heads=2,
        kv_heads=1,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    config = load_config(
        overrides=[
            f"runs_dir={tmp_path / 'runs'}",
            "name=qlora",
            f"model.name_or_path={model}",
            f"data.path={data}",
            "train.method=qlora",
            "train.epochs=1",
            "train.report_to=[]",
            "train.micro_batch=4",
            "train.effective_batch=8",
            "lora.r=4",
            *LEXICAL_SPLIT,
        ]
    )
    result = train(config, merge=True)
    assert result.stop_reason == "completed" and result.steps == 6
    weights = ckpt.load_checkpoint(ckpt.latest_complete(config.run_dir)).weights
    # The 4-bit base is never checkpointed: adapters and the stop token's embedding rows only.
    assert weights and all("lora_" in n or "trainable_tokens" in n for n in weights)
    assert_merged_matches_adapter(model, result.final_dir)


def test_the_plan_names_the_weights_as_stored_and_peft_adds_no_warning(inputs: Path, tmp_path: Path):
    import warnings

    from tunesmith.models.adapters import prepare_model
    from tunesmith.models.tiny import build_tiny_model

    with warnings.catch_warnings(record=True) as caught:  # peft reading transformers' deprecated property
        lora = prepare_model(run_config(inputs, "plan-lora"), stop_token_ids=[])
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert recipe._weights_name(lora, "lora") == "float32 weights"
    pytest.importorskip("bitsandbytes")
    wide = build_tiny_model(tmp_path / "m64", tokenizer_from=Path(run_config(inputs, "x").model.name_or_path), hidden_size=64, layers=1, heads=2, kv_heads=1, intermediate_size=128, max_position_embeddings=128)  # fmt: skip
    qlora = prepare_model(
        run_config(inputs, "plan-qlora", "train.method=qlora", f"model.name_or_path={wide}"), stop_token_ids=[]
    )
    # The base's first parameter reports float32 (embeddings stay unquantised), but the layers are NF4.
    assert recipe._weights_name(qlora, "qlora") == "NF4 (4-bit) base weights, float32 adapters"


def test_qlora_on_layers_too_narrow_for_the_cpu_kernel_is_a_config_error(inputs: Path):
    """32-wide layers used to crash at the first validation, inside bitsandbytes' AVX512-BF16 repacking."""
    pytest.importorskip("bitsandbytes")
    from tunesmith.models.adapters import prepare_model
    from tunesmith.models.load import load_model

    base = load_model(run_config(inputs, "x").model.name_or_path, quantization="4bit")
    if not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in base.modules()):
        pytest.skip("this CPU takes bitsandbytes' generic 4-bit path, which has no width limit")
    with pytest.raises(ConfigError, match="at least 64 wide .* use train.method=lora"):
        prepare_model(run_config(inputs, "narrow", "train.method=qlora"), stop_token_ids=[])


def test_a_full_disk_at_a_checkpoint_stops_with_the_last_complete_one(inputs: Path, monkeypatch):
    import errno

    real_save, saves = ckpt._torch_save, []

    def fill_up_on_the_second_save(obj, path):
        saves.append(path)
        if ckpt.SCHEDULER_FILE in str(path) and sum(ckpt.SCHEDULER_FILE in str(p) for p in saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", fill_up_on_the_second_save)
    config = run_config(inputs, "disk-full", "train.epochs=1")
    with pytest.raises(ckpt.CheckpointWriteError, match="no space left on device; last complete checkpoint is step 3"):
        train(config)
    assert [p.name for p in ckpt.complete_checkpoints(config.run_dir)] == ["step-3"]
    assert not list((config.run_dir / "checkpoints").glob(".tmp-*"))  # the half-written one is cleared
