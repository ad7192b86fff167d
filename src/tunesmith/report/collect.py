"""Read what a run directory holds, stage by stage, into one dict; a stage whose files are absent is None.

The report and `tunesmith runs` both start here, so they cannot disagree about a run. Each stage's
file is read as it is written by its own module; fields this code does not know are still shown
(the report renders unknown keys generically), so a stage can grow without breaking the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from tunesmith.runs import (
    COMPARE_DIR,
    CONFIG_FILE,
    DATA_DIR,
    DATA_REPORT_FILE,
    EVAL_DIR,
    EVAL_SUMMARY_FILE,
    KEY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PLAN_FILE,
    SPLIT_DIR,
    SPLIT_REPORT_FILE,
    SUMMARY_FILE,
)

STOP_OK = "completed"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a crash: the rest of the file is still worth showing
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, read from the run directory alone."""
    run = Path(run_dir)
    config_text = (run / CONFIG_FILE).read_text(encoding="utf-8") if (run / CONFIG_FILE).is_file() else None
    try:
        config = yaml.safe_load(config_text) if config_text else None
    except yaml.YAMLError:
        config = None
    out: dict[str, Any] = {
        "run": run.resolve().name,
        "dir": str(run),
        "config_text": config_text,
        "config": config if isinstance(config, dict) else None,
        "manifest": _json(run / MANIFEST_FILE),
        "data": _json(run / DATA_DIR / DATA_REPORT_FILE),
        "split": _json(run / DATA_DIR / SPLIT_DIR / SPLIT_REPORT_FILE),
        "plan": _json(run / PLAN_FILE),
        "metrics": _jsonl(run / METRICS_FILE),
        "train": _json(run / SUMMARY_FILE),
        "eval": _json(run / EVAL_DIR / EVAL_SUMMARY_FILE),
        "eval_rows": {w: _jsonl(run / EVAL_DIR / f"{w}.jsonl") for w in ("tuned", "base")},
        "blind": None,
    }
    if (run / COMPARE_DIR / KEY_FILE).is_file():
        from tunesmith.compare.unblind import unblind

        try:
            result = unblind(run, write=False)
            out["blind"] = result.to_json() if result.reviewers else {"pending": True, "items": result.items}
        except (OSError, ValueError, KeyError):
            out["blind"] = None
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def eval_metrics(info: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """[(suite.key, base, tuned)] for every numeric summary key of every suite (`n` left out)."""
    ev = info.get("eval") or {}
    models = ev.get("models") or {}
    tuned = (models.get("tuned") or {}).get("scores") or {}
    base = (models.get("base") or {}).get("scores") or {}
    rows = []
    for suite in sorted(set(tuned) | set(base)):
        keys = [k for k in {**(base.get(suite) or {}), **(tuned.get(suite) or {})} if k != "n"]
        for k in keys:
            b, t = (base.get(suite) or {}).get(k), (tuned.get(suite) or {}).get(k)
            if _number(b) or _number(t):
                rows.append((f"{suite}.{k}", b if _number(b) else None, t if _number(t) else None))
    return rows


def leaks(split: dict[str, Any]) -> int:
    """Held-out rows whose nearest train row is a near duplicate: `leakage.{val,test}.above_threshold`
    in the split stage's report (0 when tunesmith made the split)."""
    leakage = split.get("leakage") or {}
    return sum(int((leakage.get(name) or {}).get("above_threshold") or 0) for name in ("val", "test"))


def guard_rails(info: dict[str, Any]) -> list[str]:
    """Every warning a team lead must see before shipping, one line each (empty: nothing fired)."""
    fired = []
    data = info.get("data")
    if data and data.get("blocking"):
        fired.append(f"data check: blocking findings ({data.get('verdict', '')})")
    split = info.get("split")
    if split and leaks(split) > 0:
        fired.append(f"split: {leaks(split)} held-out rows leak from train (near duplicates across the split)")
    plan = info.get("plan")
    if plan:
        if plan.get("fits") is False:
            fired.append("plan: the job does not fit the planned hardware")
        lic = plan.get("license") or {}
        if lic.get("class") in ("restricted", "unknown"):
            fired.append(f"plan: license {lic.get('id') or '?'} is {lic['class']}")
    train = info.get("train")
    if train and train.get("stop_reason") not in (None, STOP_OK):
        fired.append(f"train: {train.get('why') or train.get('stop_reason')}")
    ev = info.get("eval")
    if ev:
        for f in ev.get("findings") or []:
            if isinstance(f, dict):
                if f.get("severity", "warning") in ("warning", "error"):
                    fired.append(f"eval: {f.get('message') or f.get('code')}")
            else:
                fired.append(f"eval: {f}")
        unstopped = ((ev.get("models") or {}).get("tuned") or {}).get("unstopped")
        if unstopped:
            fired.append(f"eval: {unstopped} tuned outputs never stopped (hit max_new_tokens)")
        reg = ev.get("regression") or {}
        if isinstance(reg, dict) and (reg.get("flagged") or reg.get("forgetting")):
            fired.append(
                f"regression: possible catastrophic forgetting ({reg.get('message') or reg.get('reason') or 'see below'})"
            )
    blind = info.get("blind")
    if blind and not blind.get("pending"):
        ci = (blind.get("overall") or {}).get("ci95")
        if ci and ci[1] < 0.5:
            fired.append(
                f"blind review: people prefer {blind.get('against')} (tuned win rate CI {ci[0]:.0%}-{ci[1]:.0%})"
            )
    return fired


def key_metrics(info: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `runs list` shows and `runs diff` compares, flat."""
    out: dict[str, Any] = {}
    train = info.get("train") or {}
    for k in ("best_val_loss", "best_step", "steps", "stop_reason", "minutes"):
        if train.get(k) is not None:
            out[f"train.{k}"] = train[k]
    for name, base, tuned in eval_metrics(info):
        if tuned is not None:
            out[f"eval.{name}"] = tuned
        if base is not None:
            out[f"eval.{name}.base"] = base
    blind = info.get("blind") or {}
    overall = blind.get("overall") or {}
    if overall.get("win_rate") is not None:
        out["blind.win_rate"] = overall["win_rate"]
        out["blind.votes"] = overall["wins"] + overall["losses"] + overall["ties"]
    return out
