"""``loss.png``: train and validation loss against steps, from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from ml_playground.core.atomic import atomic_write_with


def plot_losses(metrics_path: Path, out_path: Path) -> bool:
    """Write the plot; False when there is nothing to plot yet."""
    train: list[tuple[int, float]] = []
    val: list[tuple[int, float]] = []
    for line in metrics_path.read_text("utf-8").splitlines():
        record = json.loads(line)
        if "train_loss" in record:
            train.append((record["step"], record["train_loss"]))
        if "val_loss" in record:
            val.append((record["step"], record["val_loss"]))
    if not train and not val:
        return False
    import matplotlib  # imported here: a run that never plots (other ranks, a killed run) need not pay ~1 s

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for points, label in ((train, "train (batch)"), (val, "validation (whole split)")):
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, label=label, marker="o" if label.startswith("val") else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    atomic_write_with(out_path, lambda path: figure.savefig(path, format="png", dpi=100))
    plt.close(figure)
    return True
