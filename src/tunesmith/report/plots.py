"""The report's pictures, drawn with matplotlib into PNG bytes (the report embeds them as base64)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (headless servers, CI)
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def loss_png(metrics: Sequence[Mapping[str, Any]], best_step: int | None) -> bytes:
    """Training and validation loss against step, the best checkpoint marked (as train draws it)."""
    import tempfile
    from pathlib import Path

    from tunesmith.train.plots import plot_loss

    # A NaN-halted run writes its non-finite losses as strings ("nan"): not points on a curve.
    metrics = [
        {k: v for k, v in m.items() if k not in ("loss", "val_loss") or isinstance(v, (int, float))} for m in metrics
    ]
    with tempfile.TemporaryDirectory() as tmp:  # one drawing of the curves: train's own
        return plot_loss(metrics, Path(tmp) / "loss.png", best_step=best_step).read_bytes()


def eval_png(rows: Sequence[tuple[str, float | None, float | None]]) -> bytes | None:
    """Base vs tuned bars for every rate (a metric between 0 and 1)."""
    rates = [(n, b, t) for n, b, t in rows if all(v is None or 0 <= v <= 1 for v in (b, t))]
    if not rates:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rates) + 2), 3.6), dpi=110)
    xs = range(len(rates))
    width = 0.38
    base = [b or 0 for _, b, _ in rates]
    tuned = [t or 0 for _, _, t in rates]
    ax.bar([x - width / 2 for x in xs], base, width, label="base", color="tab:gray")
    ax.bar([x + width / 2 for x in xs], tuned, width, label="tuned", color="tab:green")
    for x, b, t in zip(xs, base, tuned):
        ax.text(x - width / 2, b + 0.01, f"{b:.0%}", ha="center", va="bottom", fontsize=8)
        ax.text(x + width / 2, t + 0.01, f"{t:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [n for n, _, _ in rates], rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("rate")
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def win_rate_png(rows: Sequence[tuple[str, float, tuple[float, float]]]) -> bytes | None:
    """Win rate with its 95% Wilson interval per group (overall, reviewers, strata); 50% = no preference."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2), dpi=110)
    ys = list(range(len(rows)))[::-1]
    for y, (_, rate, (lo, hi)) in zip(ys, rows):
        ax.errorbar([rate], [y], xerr=[[rate - lo], [hi - rate]], fmt="o", color="tab:green", capsize=4)
    ax.axvline(0.5, color="tab:red", linestyle="--", linewidth=1, label="no preference")
    ax.set_yticks(ys, [name for name, _, _ in rows], fontsize=8)
    ax.set_xlim(-0.02, 1.02)  # a 100% point stays visible
    ax.set_xlabel("tuned win rate (ties excluded), 95% Wilson interval")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(rows) < 4 else -0.12), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
