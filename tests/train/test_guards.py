import math

import pytest
import torch

from tunesmith.train.guards import (
    OVERFITTING,
    GuardState,
    TrainingStopped,
    fit_micro_batch,
    nan_advice,
    non_finite,
    observe_eval,
)


def run_curve(val, train, patience):
    """Feed a scripted curve; return (verdicts, state)."""
    state, verdicts = GuardState(), []
    for i, (v, t) in enumerate(zip(val, train)):
        verdict = observe_eval(state, step=(i + 1) * 10, val_loss=v, train_loss=t, patience=patience)
        verdicts.append(verdict)
        if verdict.stop:
            break
    return verdicts, state


def test_best_is_the_lowest_validation_loss_not_the_last():
    verdicts, state = run_curve(val=[2.0, 1.5, 1.2, 1.3, 1.25], train=[2.1, 1.6, 1.3, 1.2, 1.1], patience=0)
    assert [v.is_best for v in verdicts] == [True, True, True, False, False]
    assert (state.best_step, state.best_val_loss) == (30, 1.2)
    assert not any(v.stop for v in verdicts)  # patience 0 never stops


def test_overfitting_stops_after_patience_rises_while_train_falls():
    verdicts, state = run_curve(val=[2.0, 1.5, 1.6, 1.7, 1.8, 1.9], train=[2.1, 1.6, 1.4, 1.2, 1.0, 0.8], patience=2)
    assert len(verdicts) == 4  # stopped at the second rise in a row
    assert verdicts[-1].stop and verdicts[-1].reason == OVERFITTING
    assert state.best_step == 20 and state.rising == 2


def test_a_dip_resets_the_count_and_rising_train_loss_is_not_overfitting():
    # rise, dip, rise, rise: the dip resets the count, so the stop comes at the 6th evaluation
    verdicts, _ = run_curve(val=[2.0, 2.1, 1.9, 2.0, 2.1, 2.2], train=[2.0, 1.9, 1.8, 1.7, 1.6, 1.5], patience=3)
    assert [v.stop for v in verdicts] == [False] * 5 + [True]
    # Both curves rising is divergence, not memorisation: no overfitting stop.
    verdicts, state = run_curve(val=[1.0, 1.1, 1.2, 1.3], train=[1.0, 1.1, 1.2, 1.3], patience=1)
    assert not any(v.stop for v in verdicts) and state.rising == 0


def test_state_round_trips_through_json_and_continues_counting():
    _, state = run_curve(val=[2.0, 1.5, 1.6], train=[2.0, 1.5, 1.4], patience=2)
    again = GuardState.from_json(state.to_json())
    verdict = observe_eval(again, step=40, val_loss=1.7, train_loss=1.3, patience=2)
    assert verdict.stop and verdict.reason == OVERFITTING


def test_non_finite_names_the_cause():
    assert non_finite(1.0, 0.5) is None
    assert non_finite(math.nan, 0.5) == "loss"
    assert non_finite(math.inf, math.nan) == "loss"
    assert non_finite(1.0, math.inf) == "grad norm"
    assert non_finite(1.0, None) is None


def test_stop_message_gives_step_cause_and_advice(tmp_path):
    advice = nan_advice(lr=2e-4, dtype=torch.float16, grad_clip=1.0)
    assert any("bfloat16" in a for a in advice) and any("train.lr=0.0001" in a for a in advice)
    assert not any("bfloat16" in a for a in nan_advice(lr=2e-4, dtype=torch.float32, grad_clip=1.0))
    err = TrainingStopped(step=17, cause="grad norm", advice=advice, last_good=tmp_path / "step-10")
    text = str(err)
    assert "step 17" in text and "grad norm" in text and "step-10" in text and "grad_clip" in text


def test_out_of_memory_halves_micro_batch_and_keeps_the_effective_batch():
    tried = []

    def probe(size):
        tried.append(size)
        if size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    micro, accum, notes = fit_micro_batch(probe, 8, 2)
    assert tried == [8, 4, 2] and (micro, accum) == (2, 8) and len(notes) == 2
    assert "effective batch 16 -> 16" in notes[-1]


def test_odd_sizes_round_the_effective_batch_up_and_other_errors_pass_through():
    def cpu_oom(size):
        if size > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes")

    assert fit_micro_batch(cpu_oom, 3, 1)[:2] == (1, 3)

    def broken(size):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit_micro_batch(broken, 8, 1)
    with pytest.raises(torch.OutOfMemoryError):  # nothing left to halve
        fit_micro_batch(lambda s: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")), 1, 4)


def test_first_signal_asks_to_stop_and_a_second_acts_at_once():
    import os
    import signal

    import pytest

    from tunesmith.train.guards import StopRequest

    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested  # the loop finishes its step and saves; nothing is raised mid-step
        with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C is Python's own: out at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
