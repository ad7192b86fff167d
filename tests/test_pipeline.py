"""`tunesmith run`: stage order, gates, the ledger, resume.

The real check, clean, train, compare and report stages run on a tiny Llama and tiny data. The
split, plan and eval stages are being built on other branches: where a test needs them it uses
small real functions standing in for them (`stand_in_*` below: they write the files the real stages
write, in the same layout) or, for the gate logic of our own `_split`/`_plan` code, a stand-in module
with the API those branches publish (`split_file`, `plan_model`, `check_license`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import chat_row, read_jsonl, write_jsonl
from tests.train.test_recipe import poison_at, run_config, tiny_inputs
from tunesmith import pipeline
from tunesmith.config import ConfigError
from tunesmith.pipeline import (
    DONE,
    FAILED,
    REUSED,
    STOPPED,
    UNAVAILABLE,
    Outcome,
    Stage,
    default_stages,
    read_ledger,
    run_pipeline,
)
from tunesmith.runs import (
    COMPARE_DIR,
    EVAL_DIR,
    EVAL_SUMMARY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PIPELINE_FILE,
    REPORT_FILE,
    SHEET_FILE,
    SPLIT_FILES,
    SUPERSEDED_DIR,
    write_json,
)
from tunesmith.train import checkpoint as ckpt

ORDER = ["check", "clean", "split", "plan", "train", "eval", "compare", "report"]


def quiet() -> Console:
    return Console(quiet=True)


# ---- stand-ins for the stages not on main yet -------------------------------------------------------


def stand_in_split(ctx: pipeline.Context) -> Outcome:
    """Stands in for tunesmith.split: the split's files in its layout, the last 6 clean rows held
    out as the test set (main's trainer still draws its validation rows from clean.jsonl itself)."""
    rows = read_jsonl(ctx.clean_path)
    ctx.split_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train": rows[:-10], "val": rows[-10:-6], "test": rows[-6:]}
    for name, part in parts.items():
        write_jsonl(ctx.split_dir / SPLIT_FILES[name], part)
    return Outcome(f"{len(rows) - 10} train / 4 val / 6 test", {})


def stand_in_plan(ctx: pipeline.Context) -> Outcome:
    write_json(ctx.run_dir / "plan.json", {"fits": True, "model": ctx.config.model.name_or_path})
    return Outcome("fits", {"fits": True})


def stand_in_eval(ctx: pipeline.Context) -> Outcome:
    """Stands in for tunesmith.evaluate.runner: the last 6 clean rows (the stand-in split's test set)
    answered by 'tuned' with the reference and by 'base' with nothing; eval/ in evaluate_run's layout.
    (Read from clean.jsonl: a trainer that splits by itself rewrites the split's files.)"""
    rows = read_jsonl(ctx.clean_path)[-6:]
    (ctx.run_dir / EVAL_DIR).mkdir(exist_ok=True)
    models = {}
    for name in ("tuned", "base"):
        out = []
        for i, row in enumerate(rows):
            answer = row["messages"][-1]["content"] if name == "tuned" else ""
            out.append({"id": str(i), "prompt": row["messages"][:-1], "output": answer, "reference": answer})
        write_jsonl(ctx.run_dir / EVAL_DIR / f"{name}.jsonl", out)
        hits = sum(r["output"] == rows[i]["messages"][-1]["content"] for i, r in enumerate(out))
        models[name] = {"scores": {"exact": {"accuracy": hits / len(rows), "n": len(rows)}}}
    write_json(ctx.run_dir / EVAL_DIR / EVAL_SUMMARY_FILE, {"split": "test", "n": len(rows), "models": models})
    return Outcome("exact accuracy: base 0 → tuned 1", {})


def stand_in_plan_inputs(ctx: pipeline.Context) -> dict:
    # The real plan reads the split's train file; a trainer that splits by itself rewrites that file
    # after the stand-in split wrote it, so the stand-in plan fingerprints the clean file instead.
    return {"clean": pipeline.file_fingerprint(ctx.clean_path), "train": ctx.config.train.model_dump(mode="json")}


def stages_with_stand_ins(**more) -> list[Stage]:
    run = {"split": stand_in_split, "plan": stand_in_plan, "eval": stand_in_eval, **more}
    stages = [dataclasses.replace(s, run=run[s.name]) if s.name in run else s for s in default_stages()]
    return [dataclasses.replace(s, inputs=stand_in_plan_inputs) if s.name == "plan" else s for s in stages]


def config_for(root: Path, name: str, data: Path | None = None, *overrides: str):
    _, shared_data = tiny_inputs(root)
    if data is None:
        data = root / f"{name}.jsonl"
        shutil.copy(shared_data, data)  # each run its own copy: tests change it
    return run_config(root, name, f"data.path={data}", "train.epochs=1", "compare.n=4", *overrides)


def statuses(result) -> list[str]:
    return [result.statuses.get(name) for name in ORDER]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipeline")
    tiny_inputs(path)
    return path


@pytest.fixture(scope="module")
def finished(root: Path) -> Path:
    """One whole pipeline, run once for the module (real check, clean, train, compare, report)."""
    config = config_for(root, "whole")
    result = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert result.stopped is None, result.stopped
    return config.run_dir


def copy_run(finished: Path, root: Path, name: str) -> pipeline.Config:
    """A private copy of the finished run (and of its data file) under a new runs_dir."""
    runs_dir = root / f"copy-{name}"
    shutil.copytree(finished, runs_dir / "whole")
    data = root / f"copy-{name}.jsonl"
    shutil.copy(root / "whole.jsonl", data)
    return run_config(root, "whole", f"data.path={data}", "train.epochs=1", "compare.n=4", f"runs_dir={runs_dir}")


# ---- the whole pipeline, then resume --------------------------------------------------------------


@pytest.mark.slow
def test_every_stage_runs_in_order_and_writes_its_outputs(finished: Path):
    ledger = json.loads((finished / PIPELINE_FILE).read_text())
    assert list(ledger["stages"]) == ORDER
    assert all(entry["status"] == DONE for entry in ledger["stages"].values())
    started = [ledger["stages"][name]["started"] for name in ORDER]
    assert started == sorted(started)
    assert ledger["finished"] and ledger["stopped"] is None
    # Each stage's files: clean data, the trained adapter, the blind sheet, the report.
    assert (finished / "data" / "clean.jsonl").is_file() and (finished / "final").is_dir()
    assert len(read_jsonl(finished / COMPARE_DIR / SHEET_FILE)) == 4
    assert (finished / REPORT_FILE).is_file()
    train = ledger["stages"]["train"]
    assert train["facts"]["stop_reason"] == "completed" and train["facts"]["steps"] > 0
    # Fingerprints are of content: the clean file's sha256 is an input of training.
    assert train["inputs"]["clean_sha256"] == pipeline.file_fingerprint(finished / "data" / "clean.jsonl")


@pytest.mark.slow
def test_the_last_screen_gives_the_numbers_before_and_after_and_what_to_do_next(finished: Path, root: Path):
    config = copy_run(finished, root, "summary")
    result = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    screen = Console(record=True, width=200)
    pipeline.print_summary(result, screen)
    text = screen.export_text()
    assert "exact.accuracy: base 0 → tuned 1" in text  # the stand-in eval: base answers nothing
    best = json.loads((config.run_dir / "train_summary.json").read_text())["best_val_loss"]
    assert f"best validation loss {best:.4f}" in text
    assert f"report: {config.run_dir / REPORT_FILE}" in text and f"tunesmith review {config.run_dir}" in text
    assert all(name in text for name in ORDER)


@pytest.mark.slow
def test_a_second_run_skips_what_is_done_and_reruns_what_changed(finished: Path, root: Path):
    config = copy_run(finished, root, "resume")
    metrics_before = (config.run_dir / METRICS_FILE).read_bytes()
    again = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert again.stopped is None
    assert statuses(again) == [REUSED] * 7 + [DONE]  # the report is always rewritten (it is cheap)
    assert (config.run_dir / METRICS_FILE).read_bytes() == metrics_before  # training did not run

    # A compare setting changed: the sheet is rebuilt, nothing upstream runs.
    fewer = config.model_copy(update={"compare": config.compare.model_copy(update={"n": 2})})
    third = run_pipeline(fewer, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert statuses(third) == [REUSED] * 6 + [DONE, DONE]
    assert len(read_jsonl(config.run_dir / COMPARE_DIR / SHEET_FILE)) == 2

    # People voted on that sheet; a sheet built from other outputs would orphan their votes: a gate.
    from tunesmith.compare.votes import cast_vote

    sheet = read_jsonl(config.run_dir / COMPARE_DIR / SHEET_FILE)
    items = {row["item"] for row in sheet}
    cast_vote(config.run_dir, "ann", sheet[0]["item"], "A", items=items, sheet_id=sheet[0]["sheet_id"])
    more = fewer.model_copy(update={"compare": config.compare.model_copy(update={"n": 3})})
    voted = run_pipeline(more, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert voted.stopped.stage == "compare" and "--force" in voted.stopped.override
    assert len(read_jsonl(config.run_dir / COMPARE_DIR / SHEET_FILE)) == 2  # the voted sheet is untouched

    # The data changed: check and clean run again; the finished training is not silently reused
    # on other data, nor thrown away: the run stops and says how to go on.
    data = Path(config.data.path)
    write_jsonl(data, [*read_jsonl(data), chat_row("what colour is jade?", "green")])
    fourth = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert statuses(fourth)[:5] == [DONE, DONE, DONE, DONE, STOPPED]
    assert fourth.stopped.stage == "train"
    assert "clean_sha256" in fourth.stopped.why and "pipeline.retrain=true" in fourth.stopped.override
    ledger = read_ledger(config.run_dir)
    assert ledger["stages"]["train"]["status"] == DONE  # still the record of the old training
    assert ledger["stopped"]["stage"] == "train"
    assert (config.run_dir / METRICS_FILE).read_bytes() == metrics_before


@pytest.mark.slow
def test_retrain_moves_the_old_training_aside_and_trains_on_the_new_data(finished: Path, root: Path):
    config = copy_run(finished, root, "retrain")
    old_final = sorted(p.name for p in (config.run_dir / "final").iterdir())
    data = Path(config.data.path)
    write_jsonl(data, [*read_jsonl(data), chat_row("what colour is jade?", "green")])
    retrain = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"retrain": True})})
    result = run_pipeline(retrain, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert result.stopped is None
    assert result.statuses["train"] == DONE and result.statuses["eval"] == DONE
    (moved,) = (config.run_dir / SUPERSEDED_DIR).iterdir()
    assert sorted(p.name for p in (moved / "final").iterdir()) == old_final
    ledger = read_ledger(config.run_dir)
    assert ledger["stages"]["train"]["inputs"]["clean_sha256"] == pipeline.file_fingerprint(
        config.run_dir / "data" / "clean.jsonl"
    )


@pytest.mark.slow
def test_a_training_guard_rail_stops_the_run_and_the_next_run_resumes_from_the_checkpoint(root: Path, monkeypatch):
    # 48 rows, batch 8: 6 steps, validated and checkpointed every 3. The probe is loss call 1 and
    # step k's micro-batches are calls 2k, 2k+1: call 10 is step 5, after the checkpoint at step 3.
    poison_at(monkeypatch, 10)
    config = config_for(root, "nan")
    result = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert result.stopped.stage == "train" and "NaN" in result.stopped.why
    assert statuses(result) == [DONE, DONE, DONE, DONE, STOPPED, None, None, None]
    assert read_ledger(config.run_dir)["stages"]["train"]["status"] == STOPPED
    assert not (config.run_dir / REPORT_FILE).exists()

    monkeypatch.undo()  # the cause is fixed; run again
    again = run_pipeline(config, stages=stages_with_stand_ins(), console=quiet(), progress=False)
    assert again.stopped is None and statuses(again) == [REUSED] * 4 + [DONE] * 4
    manifest = json.loads((config.run_dir / MANIFEST_FILE).read_text())
    assert manifest["resumed_from"] and ckpt.checkpoint_step(Path(manifest["resumed_from"])) == 3
    steps = [r["step"] for r in read_jsonl(config.run_dir / METRICS_FILE) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---- gates -----------------------------------------------------------------------------------------


def data_rows(n: int = 12) -> list[dict]:
    return [chat_row(f"what colour is thing {i}?", f"colour {i}") for i in range(n)]


def recorder(calls: list[str], name: str):
    def run(ctx):
        calls.append(name)
        return Outcome(name)

    return run


def only_data_stages(calls: list[str]) -> list[Stage]:
    """check and clean for real, every later stage a recorder (these tests stop before training)."""
    return [
        s if s.name in ("check", "clean") else dataclasses.replace(s, run=recorder(calls, s.name), inputs=None)
        for s in default_stages()
    ]


def test_blocking_data_findings_stop_at_the_check_gate_with_the_override(root: Path):
    data = write_jsonl(root / "blocking.jsonl", [*data_rows(), {"messages": [{"role": "user", "content": "hi"}]}])
    calls: list[str] = []
    # no_assistant_message left out of data.drop: clean would keep the row, so the gate stops.
    drop = [c for c in pipeline.Config.model_fields["data"].default_factory().drop if c != "no_assistant_message"]
    config = config_for(root, "blocking", data, f"data.drop={json.dumps(drop)}")
    result = run_pipeline(config, stages=only_data_stages(calls), console=quiet(), progress=False)
    assert result.stopped.stage == "data check"
    assert "no_assistant_message" in result.stopped.why and "blocking.jsonl:13" in result.stopped.why
    assert "pipeline.allow_blocking_data=true" in result.stopped.override
    assert calls == [] and list(read_ledger(config.run_dir)["stages"]) == ["check"]

    allowed = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"allow_blocking_data": True})})
    result = run_pipeline(allowed, stages=only_data_stages(calls), console=quiet(), progress=False)
    assert result.stopped is None and calls == ORDER[2:]


def test_cleaning_away_most_rows_stops_at_the_clean_gate(root: Path):
    rows = data_rows(4) * 3  # 12 rows, 8 of them exact duplicates
    data = write_jsonl(root / "dups.jsonl", rows)
    calls: list[str] = []
    config = config_for(root, "dups", data)
    result = run_pipeline(config, stages=only_data_stages(calls), console=quiet(), progress=False)
    assert result.stopped.stage == "data clean" and "8 of 12 rows (67%)" in result.stopped.why
    assert "exact_duplicate 8" in result.stopped.why and "pipeline.max_reject_fraction" in result.stopped.override
    assert calls == []
    # Raising the limit goes on; check is reused (same inputs), clean runs again (it had stopped).
    looser = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"max_reject_fraction": 0.8})})
    result = run_pipeline(looser, stages=only_data_stages(calls), console=quiet(), progress=False)
    assert result.stopped is None and result.statuses["check"] == REUSED and result.statuses["clean"] == DONE


def fake_module(monkeypatch, name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)


def test_leakage_above_the_threshold_stops_at_the_split_gate(root: Path, monkeypatch, tmp_path: Path):
    """Our `_split` against a stand-in for the split branch's module (split_file, SplitError)."""

    class SplitError(Exception):
        pass

    def split_file(path, out_dir, config, *, near_dup_threshold, fmt, progress):
        rows = read_jsonl(path)
        counts = {"train": len(rows) - 4, "val": 2, "test": 2, "rejects": 0}
        return types.SimpleNamespace(
            counts=counts,
            groups=len(rows),
            leaks={"val": 1, "test": 1},  # 2 of 4 held-out rows have a twin in train
            summary=lambda: "split",
            headline=lambda: "leakage: 2 of 4",
        )

    fake_module(monkeypatch, "tunesmith.split", split_file=split_file, SplitError=SplitError)
    settings = types.SimpleNamespace(max_leak_fraction=0.05, allow_leakage=False)
    monkeypatch.setattr(pipeline, "_split_settings", lambda ctx: settings)
    calls: list[str] = []
    stages = [s for s in only_data_stages(calls) if s.name != "split"]
    stages.insert(2, next(s for s in default_stages() if s.name == "split"))
    config = config_for(root, "leaky", write_jsonl(tmp_path / "d.jsonl", data_rows()))
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert result.stopped.stage == "split" and "2 of 4 held-out rows (50%)" in result.stopped.why
    assert "split.allow_leakage=true" in result.stopped.override and calls == []

    settings.allow_leakage = True
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert result.stopped is None and result.statuses["split"] == DONE and calls == ORDER[3:]


@pytest.mark.parametrize("why", ["licence", "memory"])
def test_an_unacknowledged_licence_or_a_plan_that_does_not_fit_stops_at_the_plan_gate(
    root: Path, monkeypatch, tmp_path: Path, why: str
):
    """Our `_plan` against a stand-in for the plan branch's API (plan_model, check_license)."""

    def check_license(config):
        if why == "licence":
            raise ConfigError("licence restricted (LICENSE names a research-only licence)")

    def plan_model(model, **kwargs):
        memory = types.SimpleNamespace(total=30e9)
        fit = types.SimpleNamespace(fits=False, micro_batch=0, budget=24e9, memory=memory)
        lic = types.SimpleNamespace(cls="permissive")
        return types.SimpleNamespace(fit=fit, license=lic, device="CPU", to_json=lambda: {"fits": False})

    fake_module(monkeypatch, "tunesmith.plan", plan_model=plan_model, PlanError=ValueError)
    fake_module(monkeypatch, "tunesmith.plan.training", check_license=check_license)
    fake_module(monkeypatch, "tunesmith.plan.report", memory_line=lambda plan: "30.0 GB per device")
    calls: list[str] = []
    stages = only_data_stages(calls)
    stages[3] = next(s for s in default_stages() if s.name == "plan")
    config = config_for(root, f"plan-{why}", write_jsonl(tmp_path / "d.jsonl", data_rows()))
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    if why == "licence":
        assert result.stopped.stage == "plan (licence)" and "model.license_acknowledged=true" in result.stopped.override
    else:
        assert result.stopped.stage == "plan" and "does not fit" in result.stopped.why
        assert "pipeline.allow_unfit=true" in result.stopped.override
    assert calls == ["split"]  # the stages after plan never ran


def test_catastrophic_forgetting_stops_at_the_eval_gate(root: Path, monkeypatch, tmp_path: Path):
    """Our `_eval` against a stand-in for the evaluation branches' API (evaluate_run, headline, and
    the regression check's `flagged` / `findings` in summary.json)."""
    finding = "possible catastrophic forgetting: on 50 general prompts the tuned model's loss is +31.0%"

    def evaluate_run(run_dir, *, config, console, progress):
        summary = {"n": 4, "models": {}, "regression": {"flagged": True, "findings": [finding]}}
        return types.SimpleNamespace(summary=summary)

    fake_module(monkeypatch, "tunesmith.evaluate.runner", evaluate_run=evaluate_run, headline=lambda summary: [])
    calls: list[str] = []
    stages = only_data_stages(calls)
    stages[5] = next(s for s in default_stages() if s.name == "eval")
    config = config_for(root, "forgets", write_jsonl(tmp_path / "d.jsonl", data_rows()))
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert result.stopped.stage == "eval (regression)" and result.stopped.why.startswith(finding)
    assert "pipeline.allow_regression=true" in result.stopped.override
    assert calls == ["split", "plan", "train"]  # compare and report never ran
    allowed = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"allow_regression": True})})
    result = run_pipeline(allowed, stages=stages, console=quiet(), progress=False)
    assert result.stopped is None and calls[-2:] == ["compare", "report"]


# ---- the ledger and the lock -------------------------------------------------------------------------


def test_a_stage_whose_module_is_missing_is_recorded_and_the_run_goes_on(root: Path, tmp_path: Path):
    def needs_missing(ctx):
        import tunesmith.not_built_yet  # noqa: F401

    def needs_missing_dependency(ctx):
        import a_package_nobody_installed  # noqa: F401

    calls: list[str] = []
    stages = [
        Stage("later", "a stage from another branch", needs_missing, None, module="tunesmith.not_built_yet"),
        Stage("after", "the next stage", recorder(calls, "after"), None),
    ]
    config = config_for(root, "missing", write_jsonl(tmp_path / "d.jsonl", data_rows()))
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert result.statuses == {"later": UNAVAILABLE, "after": DONE} and calls == ["after"]
    # A stage's own dependency that is missing is a real failure, not a stage to skip.
    stages[0] = Stage("later", "x", needs_missing_dependency, None, module="tunesmith.not_built_yet")
    with pytest.raises(ModuleNotFoundError):
        run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert read_ledger(config.run_dir)["stages"]["later"]["status"] == FAILED


def test_the_ledger_is_replaced_whole_or_not_at_all(root: Path, tmp_path: Path, monkeypatch):
    calls: list[str] = []
    data = write_jsonl(tmp_path / "d.jsonl", data_rows())
    stages = [Stage("one", "first", recorder(calls, "one"), lambda ctx: {"data": pipeline.file_fingerprint(data)})]
    config = config_for(root, "atomic", data)
    run_pipeline(config, stages=stages, console=quiet(), progress=False)
    before = (config.run_dir / PIPELINE_FILE).read_text()

    import tunesmith.runs

    real_dump = json.dump

    def dies_half_way(obj, f, **kw):  # a crash (disk full, kill) in the middle of writing the ledger
        f.write(json.dumps(obj, **kw)[:40])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tunesmith.runs.json, "dump", dies_half_way)
    with pytest.raises(OSError):
        run_pipeline(config, stages=stages, console=quiet(), progress=False)
    monkeypatch.setattr(tunesmith.runs.json, "dump", real_dump)
    assert (config.run_dir / PIPELINE_FILE).read_text() == before
    assert [p.name for p in config.run_dir.iterdir() if p.name.endswith(".tmp")] == []
    # And a ledger edited into nonsense is set aside: every stage runs again.
    (config.run_dir / PIPELINE_FILE).write_text("{not json")
    result = run_pipeline(config, stages=stages, console=quiet(), progress=False)
    assert result.statuses == {"one": DONE} and calls == ["one", "one"]
    assert (config.run_dir / f"{PIPELINE_FILE}.unreadable").is_file()


def test_the_run_directory_is_locked_for_the_whole_run(root: Path, tmp_path: Path):
    seen: list[int] = []

    def tries_to_lock_from_another_process(ctx):
        code = f"from tunesmith.runs import run_lock\nwith run_lock({str(ctx.run_dir)!r}): pass"
        seen.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode)
        with pipeline.run_lock(ctx.run_dir, stage="train"):  # the same process: re-entered, not refused
            pass
        return Outcome("ok")

    config = config_for(root, "locked", write_jsonl(tmp_path / "d.jsonl", data_rows()))
    run_pipeline(config, stages=[Stage("probe", "p", tries_to_lock_from_another_process, None)], console=quiet())
    assert seen == [1]  # RunError: in use


# ---- the command ---------------------------------------------------------------------------------------


def test_the_command_exits_1_at_a_gate_and_says_which_and_how_to_go_on(root: Path, tmp_path: Path):
    from tunesmith.cli.main import app

    rows = data_rows(4) * 3
    data = write_jsonl(tmp_path / "dups.jsonl", rows)
    model, _ = tiny_inputs(root)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"name: cli\nruns_dir: {tmp_path / 'runs'}\nmodel: {{name_or_path: {model}}}\ndata: {{path: {data}}}\n"
    )
    result = CliRunner().invoke(app, ["run", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "stopped at the data clean gate" in result.output and "pipeline.max_reject_fraction" in result.output
    assert "run the same command again" in result.output
    ledger = json.loads((tmp_path / "runs" / "cli" / PIPELINE_FILE).read_text())
    assert ledger["stopped"]["gate"] == "data clean" and ledger["stages"]["check"]["status"] == DONE

    bad = CliRunner().invoke(app, ["run", str(config), "pipeline.no_such_key=1"])
    assert bad.exit_code == 2 and "unknown key" in bad.output
