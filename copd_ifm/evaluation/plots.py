"""Evaluation plots (matplotlib, Agg backend): what a reader looks at beside the tables.

* ``pred_vs_obs_<outcome>.png``: out-of-fold predicted vs observed, one panel
  per method (continuous outcomes).
* ``confusion_<outcome>.png``: confusion matrix of the out-of-fold predicted
  level, one panel per method (ordinal outcomes).
* ``metrics.png``: every method per outcome metric, bar = mean over folds,
  error bar = sample sd over folds.
* ``differences.png``: per outcome, each method's per-fold difference from
  the reference, its mean and the adjusted interval.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from copd_ifm.evaluation.cv import CHANCE  # noqa: E402
from copd_ifm.evaluation.outcomes import Outcome  # noqa: E402
from copd_ifm.evaluation.report import METRICS  # noqa: E402
from copd_ifm.files import save_figure


def _grid(n: int, size: float = 3.4) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig: plt.Figure, path: Path) -> Path:
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_pred_vs_obs(predictions: pd.DataFrame, summary: pd.DataFrame, outcome: Outcome,
                     methods: list[str], path: Path) -> Path:
    """Scatter of out-of-fold predicted vs observed ``outcome`` (log units), identity line, mean R² per panel."""
    fig, axes = _grid(len(methods))
    data = predictions[predictions["outcome"] == outcome.name]
    r2 = summary[(summary["outcome"] == outcome.name) & (summary["metric"] == "r2")].set_index("method")["mean"]
    lo, hi = data[["observed", "predicted"]].min().min(), data[["observed", "predicted"]].max().max()
    for ax, method in zip(axes, methods):
        part = data[data["method"] == method]
        ax.scatter(part["observed"], part["predicted"], s=12, alpha=0.7)
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
        ax.set_title(f"{method}\nR² = {r2.get(method, np.nan):.3f}", fontsize=9)
        ax.set_xlabel(f"observed {outcome.name}")
        ax.set_ylabel("predicted (out of fold)")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(predictions: pd.DataFrame, outcome: Outcome, methods: list[str], path: Path) -> Path:
    """Confusion matrix (rows = true level, columns = predicted level, counts) per method, on one colour scale."""
    fig, axes = _grid(len(methods), size=3.8)
    data = predictions[(predictions["outcome"] == outcome.name) & predictions["predicted"].notna()]
    codes = list(range(len(outcome.levels)))
    matrices = {method: confusion_matrix(part["observed"].astype(int), part["predicted"].astype(int), labels=codes)
                for method, part in ((m, data[data["method"] == m]) for m in methods) if not part.empty}
    top = max([int(m.max()) for m in matrices.values()] + [1])  # a shared scale: the same colour is the same count
    for ax, method in zip(axes, methods):
        if method not in matrices:  # skipped on this outcome (too few subjects)
            ax.set_title(f"{method}: skipped", fontsize=9)
            ax.axis("off")
            continue
        ConfusionMatrixDisplay(matrices[method], display_labels=[str(c) for c in codes]).plot(
            ax=ax, colorbar=False, im_kw={"vmin": 0, "vmax": top})
        ax.set_title(method, fontsize=9)
    fig.suptitle(f"{outcome.name}: " + ", ".join(f"{i}={lab}" for i, lab in enumerate(outcome.levels)),
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_metrics(summary: pd.DataFrame, outcomes: list[Outcome], methods: list[str], path: Path) -> Path:
    """Bar chart per outcome metric: every method's mean with a ±sd error bar over folds."""
    panels = [(o, metric, label, scale) for o in outcomes for metric, label, scale in METRICS[o.kind]]
    fig, axes = _grid(len(panels), size=3.6)
    cells = summary.set_index(["method", "outcome", "metric"])
    x = np.arange(len(methods))
    for ax, (outcome, metric, label, scale) in zip(axes, panels):
        cell = cells["mean"].get  # a method skipped on this outcome has no row: no bar
        means = np.array([cell((m, outcome.name, metric), np.nan) for m in methods], dtype=float) * scale
        sds = np.array([cells["sd"].get((m, outcome.name, metric), np.nan) for m in methods], dtype=float) * scale
        ax.bar(x, np.nan_to_num(means), yerr=np.nan_to_num(sds), capsize=3, color=plt.cm.tab10(x % 10))
        ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{outcome.name} {label}", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.6)
        if (CHANCE, outcome.name, metric) in cells.index:
            ax.axhline(cells.loc[(CHANCE, outcome.name, metric), "mean"] * scale, color="grey", linestyle="--",
                       linewidth=1, label="chance (training mean / majority level)")
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_differences(differences: pd.DataFrame, comparisons: pd.DataFrame, path: Path) -> Path:
    """Per outcome, each method's per-fold difference from the reference (dots), its mean (bar) and the
    adjusted interval (black line); a dashed line at no difference."""
    outcomes = list(dict.fromkeys(comparisons["outcome"]))
    fig, axes = _grid(len(outcomes), size=3.8)
    for ax, outcome in zip(axes, outcomes):
        rows = comparisons[comparisons["outcome"] == outcome].reset_index(drop=True)
        scale = 1.0 if rows["metric"].iloc[0] == "r2" else 100.0
        for i, r in rows.iterrows():
            points = differences[(differences["outcome"] == outcome) & (differences["method"] == r["method"])]
            jitter = np.linspace(-0.15, 0.15, max(len(points), 1))[:len(points)]
            ax.scatter(points["difference"] * scale, i + jitter, s=10, alpha=0.5, color=plt.cm.tab10(i % 10))
            if np.isfinite(r["adj_low"]):
                ax.plot([r["adj_low"] * scale, r["adj_high"] * scale], [i, i], color="black", linewidth=2)
            if np.isfinite(r["mean"]):
                ax.plot([r["mean"] * scale], [i], marker="|", markersize=14, color="black")
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), rows["method"], fontsize=7)
        ax.set_xlabel(("R²" if scale == 1.0 else "accuracy (points of %)") + f" − {rows['reference'].iloc[0]}",
                      fontsize=8)
        ax.set_title(outcome, fontsize=9)
    fig.suptitle("dots: per-fold differences; |: mean; black line: Bonferroni-adjusted interval", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
