"""Hand-made run directories: the files the earlier stages write, small enough to read."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

from tunesmith.runs import (
    CONFIG_FILE,
    DATA_DIR,
    DATA_REPORT_FILE,
    EVAL_DIR,
    EVAL_SUMMARY_FILE,
    LENGTHS_PLOT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PLAN_FILE,
    SPLIT_DIR,
    SPLIT_REPORT_FILE,
    SUMMARY_FILE,
)

SYSTEM = "Answer with one SQLite query.\nCREATE TABLE singer(id INT, name TEXT, age INT);"
CATEGORIES = ["count", "filter", "join"]


def _png(path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar([1, 2, 3], [3, 1, 2])
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def eval_row(i: int, who: str, *, correct: bool, verdict: str | None = None) -> dict:
    question = f"How many singers are older than {20 + i}?"
    out = {
        "id": f"ex-{i}",
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "output": f"```sql\nSELECT count(*) FROM singer WHERE age > {20 + i}; -- {who}\n```"
        if correct
        else f"I think you want **singers**, from {who}.",
        "reference": f"SELECT count(*) FROM singer WHERE age > {20 + i}",
        "stopped": True,
        "new_tokens": 17,
        "scores": {"sql": {"executed": correct, "correct": correct, "error": None if correct else "syntax"}},
        "metadata": {"category": CATEGORIES[i % 3]},
    }
    if verdict:
        out["scores"]["judge"] = {"verdict": verdict}
    return out


def make_run(
    run_dir: Path,
    n: int = 12,
    *,
    tuned_correct=lambda i: i % 4 != 0,
    judge: bool = True,
    full: bool = True,
    lr: float = 2e-4,
    sha: str = "a" * 64,
    leaked: int = 0,
) -> Path:
    """A run directory with eval outputs (and with `full`, every earlier stage's files too)."""
    ev = run_dir / EVAL_DIR
    ev.mkdir(parents=True, exist_ok=True)
    tuned = [
        eval_row(
            i, "tuned", correct=tuned_correct(i), verdict=("win" if tuned_correct(i) else "loss") if judge else None
        )
        for i in range(n)
    ]
    base = [eval_row(i, "base", correct=i == 1) for i in range(n)]
    for name, rows in (("tuned.jsonl", tuned), ("base.jsonl", base)):
        (ev / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    acc_t = sum(r["scores"]["sql"]["correct"] for r in tuned) / n
    acc_b = sum(r["scores"]["sql"]["correct"] for r in base) / n
    summary = {
        "split": "test",
        "n": n,
        "suites": ["sql"],
        "models": {
            "tuned": {
                "path": str(run_dir / "final"),
                "unstopped": 0,
                "scores": {"sql": {"n": n, "execution_success_rate": acc_t, "execution_accuracy": acc_t}},
            },
            "base": {
                "path": "tiny-base",
                "unstopped": 3,
                "scores": {"sql": {"n": n, "execution_success_rate": acc_b, "execution_accuracy": acc_b}},
            },
        },
        "regression": {"tuned_loss": 2.1, "base_loss": 2.0, "relative_change": 0.05, "flagged": False},
        "findings": [{"code": "base_unstopped", "severity": "warning", "message": "3 base outputs hit max_new_tokens"}],
    }
    (ev / EVAL_SUMMARY_FILE).write_text(json.dumps(summary), encoding="utf-8")
    if not full:
        return run_dir
    (run_dir / CONFIG_FILE).write_text(
        f"name: {run_dir.name}\nmodel:\n  name_or_path: tiny\ntrain:\n  lr: {lr}\n  epochs: 1.0\n", encoding="utf-8"
    )
    (run_dir / MANIFEST_FILE).write_text(
        json.dumps(
            {
                "stage": "train",
                "started": "2026-12-04T10:00:00+0000",
                "versions": {"python": "3.11.2", "torch": "2.13.0", "transformers": "5.25.0"},
                "data": {"path": "examples/text2sql/conversations.jsonl", "sha256": sha, "rows": 400},
                "git_sha": "f3f7c1c",
                "hardware": {"cpus": 2, "gpus": []},
            }
        ),
        encoding="utf-8",
    )
    metrics = [{"step": s, "loss": 3.0 / s, "lr": lr} for s in range(1, 21)]
    metrics += [{"step": s, "val_loss": v} for s, v in ((5, 1.2), (10, 0.9), (15, 0.8), (20, 0.85))]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    (run_dir / SUMMARY_FILE).write_text(
        json.dumps(
            {
                "best_step": 15,
                "best_val_loss": 0.8,
                "stop_reason": "completed",
                "why": "completed all planned steps",
                "steps": 20,
                "minutes": 1.5,
                "notes": [],
            }
        ),
        encoding="utf-8",
    )
    data = run_dir / DATA_DIR
    data.mkdir(exist_ok=True)
    (data / DATA_REPORT_FILE).write_text(
        json.dumps(
            {
                "path": "conversations.jsonl",
                "rows": 400,
                "blocking": False,
                "counts": {"exact_duplicate": 12, "refusal": 3},
                "severities": {"exact_duplicate": "warning", "refusal": "warning"},
                "verdict": "OK to train: nothing blocks, but 15 warning(s) would teach the wrong thing",
                "stats": {"tokens": {"min": 30, "median": 80, "p95": 150, "max": 300}},
            }
        ),
        encoding="utf-8",
    )
    _png(data / LENGTHS_PLOT_FILE, "token lengths")
    split = data / SPLIT_DIR
    split.mkdir(exist_ok=True)
    (split / SPLIT_REPORT_FILE).write_text(
        json.dumps(
            {
                "input": "conversations.jsonl",
                "rows_read": 400,
                "counts": {"train": 320, "val": 40, "test": 40, "rejects": 0},
                "groups": {"count": 350, "with_several_rows": 30, "rows_in_shared_groups": 80, "largest": 5},
                "strata": {c: {"train": 100, "val": 13, "test": 13} for c in CATEGORIES},
                "leakage": {
                    "threshold": 0.9,
                    "val": {"rows": 40, "above_threshold": leaked, "max": 0.85, "median": 0.5, "histogram": {}},
                    "test": {"rows": 40, "above_threshold": 0, "max": 0.8, "median": 0.5, "histogram": {}},
                },
                "rows_to_read": [
                    {
                        "val_id": "v1",
                        "val": "How many singers?",
                        "train_id": "t1",
                        "train": "Count singers",
                        "similarity": 0.71,
                    }
                ],
                "nearest": [],
                "plot": None,
            }
        ),
        encoding="utf-8",
    )
    _png(split / "split_similarity.png", "similarity")
    (run_dir / PLAN_FILE).write_text(
        json.dumps(
            {
                "parameters": 134515008,
                "trainable_parameters": 4884480,
                "memory": {"weights": 269030016, "total": 1900000000},
                "fits": True,
                "micro_batch": 8,
                "grad_accum": 2,
                "license": {"id": "apache-2.0", "class": "permissive"},
                "model_kind": "instruct",
            }
        ),
        encoding="utf-8",
    )
    return run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run_dir):
    """The real uvicorn server on a free port, in a thread; yields the port."""
    import uvicorn

    from tunesmith.compare.review import review_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(review_app(run_dir), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)
