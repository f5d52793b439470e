"""PNG plots beside the run's tables (matplotlib's object API: no global backend state)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from copd_ifm.files import save_figure


def _save(fig: Figure, path: Path) -> None:
    """Write ``path`` atomically (temporary name, then rename)."""
    save_figure(fig, path, dpi=120)


def plot_linear(table: pd.DataFrame, path: Path) -> None:
    """Test top-1 (%) per linear epoch, one line per (dataset, label) of ``linear.csv``."""
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    for (dataset, label), rows in table.groupby(["dataset", "label"], sort=True):
        ax.plot(rows["epoch"], rows["test_top1"], label=f"{dataset} / {label}")
    ax.set(xlabel="linear epoch", ylabel="test top-1 (%)", title="Linear read-out on frozen features")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_pretrain(epochs: pd.DataFrame, path: Path, k: int | None = None) -> None:
    """Pretraining loss and kNN top-1 (%) per epoch from ``epochs.csv``; ``k``: the monitor's neighbours (title)."""
    knn = [c for c in epochs.columns if c.startswith("knn_top1")]
    fig = Figure(figsize=(10 if knn else 5, 4), layout="tight")
    axes = fig.subplots(1, 2 if knn else 1, squeeze=False)[0]
    axes[0].plot(epochs["epoch"], epochs["loss"], marker=".")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="Contrastive loss")
    if knn:
        for col in knn:
            rows = epochs.dropna(subset=[col])
            axes[1].plot(rows["epoch"], rows[col], marker="o", label=col.removeprefix("knn_top1_"))
        axes[1].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor" + (f" (k = {k})" if k else ""))
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)
