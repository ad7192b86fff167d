"""`tunesmith run CONFIG.yaml`: the whole pipeline, one gate after each stage, resumable.

    check → clean → split → plan → train → eval → compare (blind sheet) → report

Each stage is the library's own public function (imported when the stage runs, so a stage costs
nothing until it is reached). After each one a gate decides whether the next may run: blocking data
findings, too many rejected rows, leakage across the split, a licence nobody acknowledged, a plan
that does not fit, a training guard rail, catastrophic forgetting. A failed gate stops the run with
`GateFailed` (the CLI exits 1) saying which gate, why, and which config key overrides it.

Resuming: `RUN_DIR/pipeline.json` (runs.PIPELINE_FILE) is a ledger, written atomically after every
stage, holding each stage's status and the fingerprint of its inputs (file contents by sha256,
the config sections it reads). Running the same command again skips every stage that finished on
the same inputs and whose outputs are still there, so it picks up at the stage that stopped; a
stage whose inputs changed runs again, and so does everything downstream whose inputs its new
outputs change. Training resumes from its newest complete checkpoint (train.resume=auto). A
finished training whose inputs changed is not thrown away silently: the run stops and says so
(pipeline.retrain=true moves the old outputs aside into RUN_DIR/superseded/ and trains again).

The run directory is locked (runs.run_lock) for the whole pipeline, so two `tunesmith run`s, or a
`tunesmith train` started beside one, cannot write into it at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from tunesmith.config import Config, ConfigError
from tunesmith.runs import (
    CHECKPOINTS_DIR,
    COMPARE_DIR,
    CONFIG_FILE,
    DATA_DIR,
    DATA_REPORT_FILE,
    EVAL_DIR,
    EVAL_SUMMARY_FILE,
    FINAL_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    PIPELINE_FILE,
    PLAN_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    SHEET_FILE,
    SPLIT_DIR,
    SPLIT_FILES,
    SUMMARY_FILE,
    SUPERSEDED_DIR,
    TENSORBOARD_DIR,
    VOTES_DIR,
    flatten,
    run_lock,
    sha256_file,
    write_json,
)

LEDGER_VERSION = 1
CLEAN_FILE = "clean.jsonl"  # in DATA_DIR: the rows `data clean` kept (what training reads)
REJECTS_FILE = "rejects.jsonl"  # in DATA_DIR: the rows it rejected, each with its reasons
# What a training writes into the run directory; `pipeline.retrain` moves these aside together.
TRAIN_OUTPUTS = (CHECKPOINTS_DIR, FINAL_DIR, METRICS_FILE, SUMMARY_FILE, PLOTS_DIR, TENSORBOARD_DIR, MANIFEST_FILE)

# Ledger statuses of a stage.
DONE, STOPPED, INTERRUPTED, FAILED, RUNNING = "done", "stopped", "interrupted", "failed", "running"
SKIPPED, UNAVAILABLE = "skipped", "unavailable"
REUSED = "unchanged"  # this run's status for a stage skipped because it already ran on the same inputs


class GateFailed(Exception):
    """A gate stopped the pipeline: which stage's gate, why, and how to go on (exit 1)."""

    def __init__(self, stage: str, why: str, override: str):
        self.stage, self.why, self.override = stage, why, override
        super().__init__(f"stopped at the {stage} gate: {why}\n  to go on: {override}")


class StageSkipped(Exception):
    """A stage has nothing to do (e.g. no base outputs to compare against); the pipeline goes on."""


@dataclass
class Outcome:
    """What a stage reports: one line for the screen and the ledger, and a few facts (JSON)."""

    summary: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every stage sees: the config as given, the run directory, the console."""

    config: Config
    console: Console
    progress: bool = True
    _tokenizer: Any = None

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def data_dir(self) -> Path:
        return self.run_dir / DATA_DIR

    @property
    def clean_path(self) -> Path:
        return self.data_dir / CLEAN_FILE

    @property
    def split_dir(self) -> Path:
        return self.data_dir / SPLIT_DIR

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tunesmith.data.template import load_tokenizer

            m = self.config.model
            self._tokenizer = load_tokenizer(
                m.name_or_path, chat_template=m.chat_template, trust_remote_code=m.trust_remote_code
            )
        return self._tokenizer

    def train_config(self) -> Config:
        """The config training and evaluation get: the same, reading the cleaned rows."""
        cfg = self.config.model_copy(deep=True)
        cfg.data.path = str(self.clean_path)
        return cfg


@dataclass
class Stage:
    name: str
    title: str  # what it does, on the rule line above its output
    run: Callable[[Context], Outcome]
    # Its inputs as a JSON-able dict (file fingerprints, config sections); None: it always runs.
    inputs: Callable[[Context], dict[str, Any]] | None
    # The files it leaves; a finished stage with one of them missing runs again.
    outputs: Callable[[Context], list[Path]] = lambda ctx: []
    # The library module it needs. Not installed: the stage is `unavailable` and the pipeline goes on.
    module: str | None = None


@dataclass
class PipelineResult:
    run_dir: Path
    ledger: dict[str, Any]
    statuses: dict[str, str]  # this run's status per stage (REUSED for one skipped as unchanged)
    stopped: GateFailed | None = None
    report: Path | None = None


# ============================================================================ fingerprints


def file_fingerprint(path: str | Path | None) -> str | None:
    """sha256 of a file's content ("missing" when it does not exist; None for no path)."""
    if path is None:
        return None
    path = Path(path)
    return sha256_file(path) if path.is_file() else "missing"


def dir_fingerprint(path: str | Path) -> str:
    """A directory's file names, sizes and modification times, hashed: a model directory can be GBs,
    and any rewrite of a file changes its mtime, so this notices a new model without reading it."""
    path = Path(path)
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        digest.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def model_fingerprint(name_or_path: str | None) -> str | None:
    """A local model directory by its files; a hub id by its name (the hub's revision is its business)."""
    if name_or_path and Path(name_or_path).is_dir():
        return dir_fingerprint(name_or_path)
    return name_or_path


def _section(config: Config, name: str, *drop: str) -> Any:
    value = getattr(config, name, None)
    if value is None:  # a section another stage's branch adds (e.g. `split`), absent here
        return None
    return {k: v for k, v in value.model_dump(mode="json").items() if k not in drop}


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def changed_inputs(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Dotted names of the inputs that differ (`data_sha256`, `train.lr`, ...)."""
    a, b = flatten(old or {}), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# ============================================================================ the stages


def _data_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "data_sha256": file_fingerprint(cfg.data.path),
        "data": _section(cfg, "data", "path"),
        "tokenizer": model_fingerprint(cfg.model.name_or_path),
        "chat_template": cfg.model.chat_template,
    }


def _check(ctx: Context) -> Outcome:
    from tunesmith.data.check import FILE_ROW, check_file
    from tunesmith.data.report import print_report, verdict, write_report_json
    from tunesmith.data.schema import Severity

    cfg = ctx.config
    report = check_file(
        cfg.data.path,
        config=cfg.data,
        tokenizer=ctx.tokenizer(),
        fmt=cfg.data.format,
        plot_dir=ctx.data_dir,
        progress=ctx.progress,
    )
    print_report(report, ctx.console)
    write_report_json(report, ctx.data_dir / DATA_REPORT_FILE)
    # Every error code is in data.drop by default, so `clean` removes those rows; what it cannot
    # remove (the whole file's findings, codes taken out of data.drop) would reach training.
    kept = [
        f
        for f in report.findings
        if f.severity is Severity.ERROR and (f.source.row == FILE_ROW or f.code not in cfg.data.drop)
    ]
    if kept and not cfg.pipeline.allow_blocking_data:
        codes = sorted({f.code for f in kept})
        first = kept[0]
        where = (
            "the whole file" if first.source.row == FILE_ROW else f"{Path(first.source.path).name}:{first.source.row}"
        )
        raise GateFailed(
            "data check",
            f"{len(kept)} error finding(s) that `data clean` does not remove ({', '.join(codes)}); first: {where}: "
            f"{first.message} (full report: {ctx.data_dir / DATA_REPORT_FILE})",
            "fix the data (or model.chat_template), add the codes to data.drop so clean drops those rows, "
            "or set pipeline.allow_blocking_data=true",
        )
    summary = verdict(report)
    if report.blocking and not kept:  # verdict() speaks to someone about to train on the raw file
        errors = [f for f in report.findings if f.severity is Severity.ERROR]
        summary = f"{len(errors)} error finding(s), each on a row that `data clean` (next) drops"
    return Outcome(summary, {"rows": report.rows, "blocking": report.blocking, "counts": report.counts})


def _clean(ctx: Context) -> Outcome:
    from tunesmith.data.clean import clean_file

    cfg = ctx.config
    result = clean_file(
        cfg.data.path,
        ctx.clean_path,
        ctx.data_dir / REJECTS_FILE,
        config=cfg.data,
        tokenizer=ctx.tokenizer(),
        fmt=cfg.data.format,
        progress=ctx.progress,
    )
    ctx.console.print(escape(result.summary()))
    facts = {"rows": result.rows_read, "kept": result.kept, "rejected": result.rejected, "reasons": result.reasons}
    share = result.rejected / max(result.rows_read, 1)
    if result.kept < 2:
        raise GateFailed(
            "data clean",
            f"{result.kept} of {result.rows_read} rows survived cleaning; training needs at least 2 "
            f"(why each was rejected: {result.rejects})",
            "fix the data, or narrow data.drop to the findings that must go",
        )
    if share > cfg.pipeline.max_reject_fraction:
        top = ", ".join(f"{code} {n}" for code, n in list(result.reasons.items())[:3])
        raise GateFailed(
            "data clean",
            f"{result.rejected} of {result.rows_read} rows ({share:.0%}) rejected ({top}), more than "
            f"pipeline.max_reject_fraction={cfg.pipeline.max_reject_fraction:g}; a wrong format or template usually "
            f"explains that (read {result.rejects})",
            "fix the data or data.format, narrow data.drop, or raise pipeline.max_reject_fraction (1: never stop)",
        )
    return Outcome(f"{result.kept} of {result.rows_read} rows kept ({result.rejected} rejected)", facts)


def _split_inputs(ctx: Context) -> dict[str, Any]:
    return {
        "clean_sha256": file_fingerprint(ctx.clean_path),
        "split": _section(ctx.config, "split"),
        "near_dup_threshold": ctx.config.data.near_dup_threshold,
    }


def _split_settings(ctx: Context) -> Any:
    """config.split: the split branch's section (a seam the tests fill in where it is absent)."""
    return ctx.config.split  # type: ignore[attr-defined]


def _split(ctx: Context) -> Outcome:
    # Written against the split branch's API (tunesmith.split.split_file, config.split).
    from tunesmith.split import SplitError, split_file

    settings = _split_settings(ctx)
    try:
        result = split_file(
            ctx.clean_path,
            ctx.split_dir,
            settings,
            near_dup_threshold=ctx.config.data.near_dup_threshold,
            fmt="messages",
            progress=ctx.progress,
        )
    except SplitError as e:
        raise GateFailed(
            "split",
            str(e),
            "as it says; or split.embedder=none to group only copies and MinHash near duplicates, "
            "or lower split.val / split.test",
        ) from None
    ctx.console.print(escape(result.summary()))
    held = result.counts["val"] + result.counts["test"]
    leaked = sum(result.leaks.values())
    share = leaked / held if held else 0.0
    facts = {"counts": result.counts, "groups": result.groups, "leaked": leaked, "leak_fraction": share}
    if share > settings.max_leak_fraction and not settings.allow_leakage:
        raise GateFailed(
            "split",
            f"{leaked} of {held} held-out rows ({share:.0%}) have a near copy or paraphrase in train, more than "
            f"split.max_leak_fraction={settings.max_leak_fraction:g}: validation and test would measure memory "
            f"(rows to read: {ctx.split_dir})",
            "lower split.similarity so such rows group together, set split.dedup=true, or set split.allow_leakage=true",
        )
    c = result.counts
    return Outcome(f"{c['train']} train / {c['val']} val / {c['test']} test; {result.headline()}", facts)


def _train_file(ctx: Context) -> Path:
    """The rows training will read: the split's train file once there is one, else the clean file."""
    split_train = ctx.split_dir / SPLIT_FILES["train"]
    return split_train if split_train.is_file() else ctx.clean_path


def _plan_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "model": model_fingerprint(cfg.model.name_or_path),
        "model_config": _section(cfg, "model"),
        "train_sha256": file_fingerprint(_train_file(ctx)),
        "train": _section(cfg, "train", "resume", "report_to"),
        "lora": _section(cfg, "lora"),
        "max_seq_len": cfg.data.max_seq_len,
    }


def _plan(ctx: Context) -> Outcome:
    # Written against the plan branch's API (plan_model, plan.training.check_license).
    from tunesmith.plan import PlanError, plan_model
    from tunesmith.plan.report import memory_line
    from tunesmith.plan.training import check_license

    cfg = ctx.config
    try:
        check_license(cfg)
    except ConfigError as e:
        raise GateFailed("plan (licence)", str(e), "model.license_acknowledged=true") from None
    micro = cfg.train.micro_batch
    try:
        plan = plan_model(
            cfg.model.name_or_path,
            method=cfg.train.method,
            micro_batch=None if micro == "auto" else int(micro),
            effective_batch=cfg.train.effective_batch,
            data=_train_file(ctx),
            epochs=cfg.train.epochs,
            lora_r=cfg.lora.r,
            max_seq_len=cfg.data.max_seq_len,
        )
    except PlanError as e:
        raise ConfigError(f"plan: {e}") from None
    write_json(ctx.run_dir / PLAN_FILE, plan.to_json())  # training rewrites it at the layout it chose
    line = f"{memory_line(plan)}; budget {plan.fit.budget / 1e9:.1f} GB ({plan.device})"
    ctx.console.print(escape(line))
    facts = {"fits": plan.fit.fits, "micro_batch": plan.fit.micro_batch, "license": plan.license.cls}
    if not plan.fit.fits and not cfg.pipeline.allow_unfit:
        raise GateFailed(
            "plan",
            f"the job does not fit: {line}",
            "lower train.micro_batch or data.max_seq_len, use train.method=qlora, "
            "or set pipeline.allow_unfit=true (the trainer halves the micro-batch on out-of-memory)",
        )
    return Outcome(line, facts)


def _train_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "clean_sha256": file_fingerprint(ctx.clean_path),
        "model": model_fingerprint(cfg.model.name_or_path),
        "model_config": _section(cfg, "model"),
        "data": _section(cfg, "data", "path"),
        "split": _section(cfg, "split"),
        "lora": _section(cfg, "lora"),
        "train": _section(cfg, "train", "resume", "report_to"),
    }


def _gate_errors() -> tuple[type[Exception], ...]:
    from tunesmith.train.recipe import TrainingStopped

    try:  # a user's data.val_path that leaks into train (split branch): a gate, like a guard rail
        from tunesmith.split import LeakageError
    except ImportError:
        return (TrainingStopped,)
    return (TrainingStopped, LeakageError)


def _train(ctx: Context) -> Outcome:
    from tunesmith.train.recipe import train

    try:
        result = train(ctx.train_config())  # resumes from the newest complete checkpoint (train.resume=auto)
    except _gate_errors() as e:
        raise GateFailed(
            "train", str(e), "follow the advice above, then run again (training resumes from its last good checkpoint)"
        ) from None
    best = (
        f"best val loss {result.best_val_loss:.4f} at step {result.best_step}"
        if result.best_val_loss
        else "no validation"
    )
    facts = {
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "final_dir": str(result.final_dir) if result.final_dir else None,
    }
    return Outcome(f"{result.stop_reason} after {result.steps} steps, {best}", facts)


def _eval_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "tuned": dir_fingerprint(ctx.run_dir / FINAL_DIR),
        "base": model_fingerprint(cfg.model.name_or_path),
        "held_out": {name: file_fingerprint(ctx.split_dir / SPLIT_FILES[name]) for name in ("val", "test")},
        "eval": _section(cfg, "eval"),
    }


def _eval(ctx: Context) -> Outcome:
    # Written against the evalcore branch's API (evaluate_run, headline).
    from tunesmith.evaluate.runner import evaluate_run, headline

    result = evaluate_run(ctx.run_dir, config=ctx.train_config(), console=ctx.console, progress=ctx.progress)
    lines = headline(result.summary)
    regression = result.summary.get("regression") or {}
    if regression.get("flagged") and not ctx.config.pipeline.allow_regression:
        # evaluate.regression's findings are whole sentences ("possible catastrophic forgetting: ...").
        why = "; ".join(str(f) for f in regression.get("findings") or []) or "possible catastrophic forgetting"
        raise GateFailed(
            "eval (regression)",
            f"{why} (details: {ctx.run_dir / EVAL_DIR / EVAL_SUMMARY_FILE})",
            "lower train.lr, train.epochs or lora.r and run again with a new name=, "
            "or set pipeline.allow_regression=true to review it anyway",
        )
    return Outcome("; ".join(lines) or f"{result.summary.get('n')} examples evaluated", {"headline": lines})


def _compare_inputs(ctx: Context) -> dict[str, Any]:
    from tunesmith.compare.sheet import EVAL_FILES

    return {
        "eval": {name: file_fingerprint(ctx.run_dir / EVAL_DIR / f) for name, f in EVAL_FILES.items()},
        "compare": _section(ctx.config, "compare", "port"),
    }


def _compare(ctx: Context) -> Outcome:
    from tunesmith.compare import build_sheet
    from tunesmith.compare.sheet import EVAL_FILES, CompareError

    missing = [f for f in EVAL_FILES.values() if not (ctx.run_dir / EVAL_DIR / f).is_file()]
    if missing:
        raise StageSkipped(f"no {' or '.join(missing)} in {ctx.run_dir / EVAL_DIR}: nothing to put side by side")
    c = ctx.config.compare
    votes = ctx.run_dir / COMPARE_DIR / VOTES_DIR
    try:
        sheet = build_sheet(ctx.run_dir, against="base", n=c.n, seed=c.seed, stratify_by=c.stratify_by)
    except CompareError as e:
        if not (votes.is_dir() and any(votes.iterdir())):
            raise
        # A new sheet would orphan the votes people cast on the old one: theirs to decide, not ours.
        raise GateFailed(
            "compare",
            str(e),
            f"count the votes with `tunesmith unblind {ctx.run_dir}`, then `tunesmith compare {ctx.run_dir} --force` "
            "(the old votes are moved aside) and run again",
        ) from None
    return Outcome(f"{sheet.items} prompts, tuned vs {sheet.against}, blind, in {sheet.dir}", {"items": sheet.items})


def _report(ctx: Context) -> Outcome:
    from tunesmith.report import write_report

    path = write_report(ctx.run_dir)
    return Outcome(str(path), {"path": str(path)})


def default_stages() -> list[Stage]:
    """The pipeline in order. Tests and other callers may replace a stage (dataclasses.replace)."""
    data_dir = lambda ctx: ctx.data_dir  # noqa: E731
    return [
        Stage(
            "check",
            "data check: what is wrong with the examples, and where",
            _check,
            _data_inputs,
            lambda ctx: [data_dir(ctx) / DATA_REPORT_FILE],
        ),
        Stage(
            "clean",
            "data clean: every row kept or rejected with its reasons",
            _clean,
            _data_inputs,
            lambda ctx: [ctx.clean_path, data_dir(ctx) / REJECTS_FILE],
        ),
        Stage(
            "split",
            "split: train / val / test by group, and the leakage check",
            _split,
            _split_inputs,
            lambda ctx: [ctx.split_dir / f for f in SPLIT_FILES.values()],
            module="tunesmith.split",
        ),
        Stage(
            "plan",
            "plan: licence, parameters, memory, will it fit",
            _plan,
            _plan_inputs,
            lambda ctx: [ctx.run_dir / PLAN_FILE],
            module="tunesmith.plan",
        ),
        Stage(
            "train",
            "train: fine-tune on the clean examples, with its guard rails",
            _train,
            _train_inputs,
            lambda ctx: [ctx.run_dir / FINAL_DIR, ctx.run_dir / SUMMARY_FILE],
        ),
        Stage(
            "eval",
            "eval: base and tuned answer the held-out prompts",
            _eval,
            _eval_inputs,
            lambda ctx: [ctx.run_dir / EVAL_DIR / EVAL_SUMMARY_FILE],
            module="tunesmith.evaluate.runner",
        ),
        Stage(
            "compare",
            "compare: a blind side-by-side sheet for people to vote on",
            _compare,
            _compare_inputs,
            lambda ctx: [ctx.run_dir / COMPARE_DIR / SHEET_FILE],
        ),
        Stage("report", "report: one self-contained page", _report, None, module="tunesmith.report"),
    ]


# ============================================================================ the ledger


def read_ledger(run_dir: str | Path) -> dict[str, Any]:
    """The run's ledger, or an empty one. A ledger that does not parse (edited by hand) is set
    aside, not trusted: every stage then runs again, which is safe (training resumes)."""
    path = Path(run_dir) / PIPELINE_FILE
    empty: dict[str, Any] = {"version": LEDGER_VERSION, "stages": {}}
    if not path.is_file():
        return empty
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        path.rename(path.with_name(f"{PIPELINE_FILE}.unreadable"))
        return empty
    if not isinstance(ledger, dict) or ledger.get("version") != LEDGER_VERSION:
        return empty
    ledger.setdefault("stages", {})
    return ledger


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _missing_module(e: ModuleNotFoundError, module: str | None) -> bool:
    """Is this stage's own module the one not installed (not some package it imports)?"""
    return bool(module and e.name and (e.name == module or module.startswith(e.name + ".")))


def _supersede_training(run_dir: Path) -> Path:
    """Move a finished training's outputs into RUN_DIR/superseded/train-<time>/; returns that folder."""
    target = run_dir / SUPERSEDED_DIR / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for name in (*TRAIN_OUTPUTS, CONFIG_FILE):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(target / name))
    return target


# ============================================================================ entry point


def run_pipeline(
    config: Config, *, stages: list[Stage] | None = None, console: Console | None = None, progress: bool = True
) -> PipelineResult:
    """Run every stage in order into `config.run_dir`, skipping those already done on the same
    inputs. Returns with `stopped` set when a gate fails (the ledger says so too); raises what a
    stage raises otherwise (ConfigError, DataError, RunError: exit 2; TrainingInterrupted: 130),
    after recording it in the ledger."""
    console = console or Console(highlight=False)
    ctx = Context(config, console, progress)
    stages = default_stages() if stages is None else stages
    run_dir = config.run_dir
    statuses: dict[str, str] = {}
    with run_lock(run_dir, stage="pipeline"):
        ledger = read_ledger(run_dir)
        ledger.update(config=config.model_dump(mode="json"), started=_now(), finished=None, stopped=None)
        path = run_dir / PIPELINE_FILE
        write_json(path, ledger)
        for i, stage in enumerate(stages, 1):
            old = ledger["stages"].get(stage.name) or {}
            inputs = stage.inputs(ctx) if stage.inputs else None
            fp = fingerprint(inputs) if inputs is not None else None
            if (
                old.get("status") == DONE
                and fp is not None
                and old.get("fingerprint") == fp
                and all(p.exists() for p in stage.outputs(ctx))
            ):
                statuses[stage.name] = REUSED
                console.print(f"[dim]{i}/{len(stages)} {stage.name}: unchanged since {old.get('finished')}, skipped[/]")
                continue
            if stage.name == "train" and old.get("status") == DONE and inputs is not None:
                what = ", ".join(changed_inputs(old.get("inputs"), inputs)) or "its outputs are missing"
                if not config.pipeline.retrain:
                    statuses[stage.name] = STOPPED
                    gate = GateFailed(
                        "train",
                        f"{run_dir} already holds a finished training, and its inputs changed ({what})",
                        f"start a separate run with name=NEW (then `tunesmith runs diff {run_dir} RUNS_DIR/NEW`), "
                        "or set pipeline.retrain=true to move the old training into "
                        f"{run_dir / SUPERSEDED_DIR} and train again",
                    )
                    return _stop(ctx, ledger, stage, inputs, fp, gate, statuses)
                moved = _supersede_training(run_dir)
                console.print(f"[yellow]inputs changed ({escape(what)}): the old training moved to {moved}[/]")
            console.print(Rule(f"{i}/{len(stages)} {stage.title}"))
            entry: dict[str, Any] = {"status": RUNNING, "inputs": inputs, "fingerprint": fp, "started": _now()}
            ledger["stages"][stage.name] = entry
            write_json(path, ledger)
            t0 = time.monotonic()
            try:
                outcome = stage.run(ctx)
            except GateFailed as gate:
                statuses[stage.name] = STOPPED
                return _stop(ctx, ledger, stage, inputs, fp, gate, statuses, seconds=time.monotonic() - t0)
            except StageSkipped as e:
                entry.update(status=SKIPPED, reason=str(e), seconds=round(time.monotonic() - t0, 1))
                statuses[stage.name] = SKIPPED
                console.print(f"[yellow]{stage.name} skipped: {escape(str(e))}[/]")
                write_json(path, ledger)
                continue
            except BaseException as e:
                if isinstance(e, ModuleNotFoundError) and _missing_module(e, stage.module):
                    reason = f"{e.name} is not installed in this tunesmith"
                    entry.update(status=UNAVAILABLE, reason=reason)
                    statuses[stage.name] = UNAVAILABLE
                    console.print(f"[yellow]{stage.name} unavailable: {escape(reason)}; going on without it[/]")
                    write_json(path, ledger)
                    continue
                interrupted = type(e).__name__ in ("TrainingInterrupted", "KeyboardInterrupt")
                entry.update(
                    status=INTERRUPTED if interrupted else FAILED,
                    error=f"{type(e).__name__}: {e}",
                    seconds=round(time.monotonic() - t0, 1),
                )
                ledger["stopped"] = {"stage": stage.name, "why": entry["error"]}
                write_json(path, ledger)
                raise
            entry.update(
                status=DONE,
                finished=_now(),
                seconds=round(time.monotonic() - t0, 1),
                summary=outcome.summary,
                facts=outcome.facts,
            )
            statuses[stage.name] = DONE
            write_json(path, ledger)
        ledger["finished"] = _now()
        write_json(path, ledger)
    report = run_dir / REPORT_FILE
    return PipelineResult(run_dir, ledger, statuses, None, report if report.is_file() else None)


def _stop(
    ctx: Context,
    ledger: dict[str, Any],
    stage: Stage,
    inputs: dict[str, Any] | None,
    fp: str | None,
    gate: GateFailed,
    statuses: dict[str, str],
    seconds: float | None = None,
) -> PipelineResult:
    previous = ledger["stages"].get(stage.name) or {}
    why = {"why": gate.why, "override": gate.override}
    if previous.get("status") == DONE:
        # A finished training whose inputs changed stays recorded as finished, on its old inputs.
        ledger["stages"][stage.name] = {**previous, "gate": why}
    else:
        entry = {"status": STOPPED, "inputs": inputs, "fingerprint": fp, "gate": why, "finished": _now()}
        ledger["stages"][stage.name] = entry | ({} if seconds is None else {"seconds": round(seconds, 1)})
    ledger["stopped"] = {"stage": stage.name, "gate": gate.stage, "why": gate.why, "override": gate.override}
    write_json(ctx.run_dir / PIPELINE_FILE, ledger)
    report = ctx.run_dir / REPORT_FILE
    return PipelineResult(ctx.run_dir, ledger, statuses, gate, report if report.is_file() else None)


# ============================================================================ the summary


def headline_lines(run_dir: str | Path, limit: int = 6) -> list[str]:
    """Before/after numbers from what the run directory holds: eval metrics base → tuned, the best
    validation loss. Read through report.collect, like the report, so the two never disagree."""
    from tunesmith.report.collect import collect, eval_metrics, guard_rails

    info = collect(run_dir)
    lines = []
    for name, base, tuned in eval_metrics(info)[:limit]:
        fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        lines.append(f"{name}: base {fmt(base)} → tuned {fmt(tuned)}")
    train = info.get("train") or {}
    if train.get("best_val_loss") is not None:
        lines.append(f"best validation loss {train['best_val_loss']:.4f} at step {train.get('best_step')}")
    cleaned = (Path(run_dir) / DATA_DIR / CLEAN_FILE).is_file()
    # The raw file's blocking findings are the report's business; here `clean` already dropped those rows.
    lines += [f"guard rail: {g}" for g in guard_rails(info) if not (cleaned and g.startswith("data check:"))]
    return lines


def print_summary(result: PipelineResult, console: Console) -> None:
    """The one screen at the end: each stage's outcome, the numbers, where to look next."""
    table = Table(title=f"tunesmith run · {result.run_dir}", title_justify="left", show_edge=False)
    for column in ("stage", "status", "seconds", "outcome"):
        table.add_column(column, overflow="fold")
    for name, entry in result.ledger.get("stages", {}).items():
        status = result.statuses.get(name, "not reached" if result.stopped else entry.get("status", "?"))
        outcome = entry.get("summary") or entry.get("reason") or (entry.get("gate") or {}).get("why") or ""
        style = {STOPPED: "bold red", DONE: "green", REUSED: "dim", UNAVAILABLE: "yellow", SKIPPED: "yellow"}
        table.add_row(
            name,
            f"[{style.get(status, '')}]{status}[/]" if style.get(status) else status,
            str(entry.get("seconds", "")),
            escape(str(outcome).splitlines()[0][:160] if outcome else ""),
        )
    console.print(table)
    for line in headline_lines(result.run_dir):
        console.print(f"[bold]{escape(line)}[/]")
    if result.stopped:
        console.print(f"[bold red]stopped at the {escape(result.stopped.stage)} gate:[/] {escape(result.stopped.why)}")
        console.print(f"to go on: {escape(result.stopped.override)}")
        console.print("then run the same command again: finished stages are skipped")
        return
    if result.report:
        console.print(f"report: {result.report}")
    if (result.run_dir / COMPARE_DIR / SHEET_FILE).is_file():
        console.print(f"blind review: tunesmith review {result.run_dir}   (then: tunesmith unblind {result.run_dir})")
