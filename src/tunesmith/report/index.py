"""`tunesmith runs`: the runs of a runs directory side by side, so iterations can be compared.

Early runs overfit or underfit; the next run changes a learning rate or the data. `diff` says
exactly what changed between two runs (config keys, data fingerprint) and what that did to the
results, so "run 3 was better" comes with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.compare.sheet import CompareError
from tunesmith.report.collect import collect, guard_rails, key_metrics
from tunesmith.runs import CONFIG_FILE, EVAL_DIR, EVAL_SUMMARY_FILE, MANIFEST_FILE, flatten

_MARKERS = (CONFIG_FILE, MANIFEST_FILE, f"{EVAL_DIR}/{EVAL_SUMMARY_FILE}")


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _MARKERS)


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run given as a directory, or by name inside the runs directory."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if is_run(candidate):
            return candidate
    raise CompareError(f"{run}: not a run directory (no {', '.join(_MARKERS)}), nor a run in {runs_dir}/")


def find_runs(runs_dir: str | Path) -> list[Path]:
    root = Path(runs_dir)
    if not root.is_dir():
        raise CompareError(f"{root}: no such runs directory (set it with --runs-dir)")
    return sorted(p for p in root.iterdir() if is_run(p))


def _fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    data = (info.get("manifest") or {}).get("data") or {}
    return {k: data.get(k) for k in ("path", "sha256", "rows") if data.get(k) is not None}


def run_row(run_dir: Path) -> dict[str, Any]:
    """One line of `runs list`: name, when, data fingerprint, key metrics, guard rails fired."""
    info = collect(run_dir)
    manifest = info.get("manifest") or {}
    sha = _fingerprint(info).get("sha256")
    return {
        "run": info["run"],
        "started": manifest.get("started"),
        "data_sha256": sha[:12] if sha else None,
        "metrics": key_metrics(info),
        "guard_rails": guard_rails(info),
    }


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    return [run_row(p) for p in find_runs(runs_dir)]


def show_run(run_dir: Path) -> dict[str, Any]:
    info = collect(run_dir)
    return {
        **run_row(run_dir),
        "dir": str(run_dir),
        "data": _fingerprint(info),
        "config": info.get("config"),
        "versions": (info.get("manifest") or {}).get("versions"),
        "stages": {k: info.get(k) is not None for k in ("data", "split", "plan", "train", "eval", "blind")},
    }


@dataclass
class RunDiff:
    a: str
    b: str
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    data: list[tuple[str, Any, Any]] = field(default_factory=list)
    results: list[tuple[str, Any, Any, float | None]] = field(default_factory=list)  # key, a, b, b - a


def diff_runs(a: Path, b: Path) -> RunDiff:
    """What differs between two runs: config keys, data fingerprint, and every key metric."""
    ia, ib = collect(a), collect(b)
    out = RunDiff(ia["run"], ib["run"])
    ca, cb = flatten(ia.get("config") or {}), flatten(ib.get("config") or {})
    # The run's own name and directory always differ; they are not a change worth reading.
    ignore = {"name", "runs_dir"}
    out.config = [
        (k, ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if k not in ignore and ca.get(k) != cb.get(k)
    ]
    fa, fb = _fingerprint(ia), _fingerprint(ib)
    out.data = [(k, fa.get(k), fb.get(k)) for k in ("path", "sha256", "rows") if fa.get(k) != fb.get(k)]
    ma, mb = key_metrics(ia), key_metrics(ib)
    for k in sorted(set(ma) | set(mb)):
        va, vb = ma.get(k), mb.get(k)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        out.results.append((k, va, vb, vb - va if numeric else None))
    return out
