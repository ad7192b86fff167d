"""`plots/loss.png`: training and validation loss against step, the best checkpoint marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (headless servers, CI)
import matplotlib.pyplot as plt  # noqa: E402

from tunesmith.runs import write_png  # noqa: E402


def plot_loss(metrics: Sequence[Mapping[str, Any]], path: str | Path, *, best_step: int | None = None) -> Path:
    """Draw the curves from metrics rows (`loss` rows for training, `val_loss` rows for validation)."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        if train:
            ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.6, linewidth=1)
        if val:
            ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
        best = [v for s, v in val if s == best_step]
        if best:
            ax.scatter(
                [best_step],
                best,
                s=120,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=2,
                zorder=3,
                label=f"best (step {best_step}, {best[0]:.4f})",
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per trained token (nats)")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        path = write_png(path, fig)
    finally:
        plt.close(fig)
    return path
