"""Plots and tables of the feature-suppression studies (matplotlib Agg, pandas).

Every function takes the study's results table (one row per finished run, the
columns of :data:`natural_images.studies.RESULT_COLUMNS` plus ``acc_<feature>``
and ``err_<feature>`` in percent) and writes one PNG atomically.

* :func:`plot_difficulty`: read-out accuracy vs τ (β = 0 runs) and vs β, one
  line per feature, mean ± sd over seeds (the paper's Fig. 3).
* :func:`plot_ifm`: one panel per feature, bars per τ for baseline and IFM,
  error bars = sd over seeds (the paper's Fig. 6); :func:`ifm_table` gives the
  mean ± sd table.
* :func:`plot_correlation`: scatter of final InfoNCE loss vs read-out error per
  feature with Pearson r, and the Pearson correlation matrix of loss and errors
  (the paper's Fig. 2); :func:`correlation_table` gives r, p and a 95 % CI.

Error bars appear only where a setting has at least 2 seeds. Every plot
draws the :class:`References`: chance read-out (dashed), the untrained
encoder's read-out (dotted: mean, shaded: range) and, against the loss, InfoNCE at chance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from copd_ifm.files import save_figure

FEATURE_COLORS = {"color": "tab:red", "shape": "tab:blue", "texture": "tab:green", "digit": "tab:purple",
                  "object": "tab:orange"}


@dataclass
class References:
    """What a read-out or loss means: chance and an untrained encoder (percent accuracy per feature)."""

    chance: dict[str, float] = field(default_factory=dict)     # accuracy of always guessing the majority class
    control: dict[str, float] = field(default_factory=dict)    # mean accuracy of the untrained encoder
    control_range: dict[str, tuple[float, float]] = field(default_factory=dict)   # lowest, highest untrained
    chance_loss: float | None = None                           # InfoNCE at chance, ln(2N − 1)


def _reference_lines(ax: plt.Axes, refs: References, feature: str, error: bool = False, label: bool = True,
                     color: str = "0.35") -> None:
    """Horizontal chance (dashed) and untrained-encoder (dotted: mean; shaded: lowest to highest) lines for
    ``feature`` (as error when ``error``)."""
    low, high = refs.control_range.get(feature, (np.nan, np.nan))
    if np.isfinite(low) and np.isfinite(high) and high > low:
        span = (100 - high, 100 - low) if error else (low, high)
        ax.axhspan(*span, color=color, alpha=0.12, linewidth=0, zorder=1,
                   label="untrained encoders (range)" if label else None)
    for value, style, name in ((refs.chance.get(feature), "--", "chance"),
                               (refs.control.get(feature), ":", "untrained encoders (mean)")):
        if value is not None and np.isfinite(value):
            ax.axhline(100 - value if error else value, color=color, linestyle=style, linewidth=1.2, zorder=3,
                       label=name if label else None)


def _save(fig: plt.Figure, path: Path) -> Path:
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def mean_sd(table: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean, sample sd (NaN for one seed: no spread is known) and seed count of ``columns`` per group of ``by``."""
    grouped = table.groupby(list(by), sort=True)[list(columns)]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    return out.join(grouped.size().rename("n")).reset_index()


def plot_difficulty(table: pd.DataFrame, features: Sequence[str], beta_temperature: float, path: Path,
                    refs: References | None = None) -> Path:
    """Accuracy vs τ (β = 0, ε = 0 runs) and vs β (τ = ``beta_temperature``, ε = 0 runs), one line per feature."""
    base = table[table["ifm_eps"] == 0]
    acc = [f"acc_{f}" for f in features]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = ((axes[0], base[base["hcl_beta"] == 0], "temperature", "temperature τ (β = 0)", True),
              (axes[1], base[np.isclose(base["temperature"], beta_temperature)], "hcl_beta",
               f"hard-negative concentration β (τ = {beta_temperature:g})", False))
    for ax, rows, key, label, log_x in panels:
        if rows.empty:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        else:
            stats_ = mean_sd(rows, [key], acc)
            for i, f in enumerate(features):
                ax.errorbar(stats_[key], stats_[f"acc_{f}_mean"], yerr=stats_[f"acc_{f}_sd"], marker="o",
                            capsize=3, label=f, color=FEATURE_COLORS.get(f))
                _reference_lines(ax, refs or References(), f, label=i == 0, color=FEATURE_COLORS.get(f, "0.35"))
            if log_x:
                ax.set_xscale("log")
            ax.set_xticks(stats_[key], [f"{v:g}" for v in stats_[key]])
            ax.minorticks_off()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("linear read-out accuracy (%)")
    axes[0].legend()
    fig.suptitle("Read-out accuracy vs instance-discrimination difficulty\n(mean ± sd where ≥ 2 seeds; "
                 "dashed: chance, dotted and shaded: untrained encoders' mean and range)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ifm_table(table: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """Per τ and ε: mean, sd and count of each feature's accuracy over seeds."""
    return mean_sd(table, ["temperature", "ifm_eps"], [f"acc_{f}" for f in features])


def plot_ifm(table: pd.DataFrame, features: Sequence[str], path: Path, refs: References | None = None) -> Path:
    """One panel per feature: bars per τ, baseline (ε = 0) beside each IFM ε, error bars = sd over seeds."""
    summary = ifm_table(table, features)
    temps = sorted(summary["temperature"].unique())
    eps = sorted(summary["ifm_eps"].unique())
    width = 0.8 / max(len(eps), 1)
    fig, axes = plt.subplots(1, len(features), figsize=(4 * len(features), 3.8), squeeze=False)
    for ax, f in zip(axes[0], features):
        for j, e in enumerate(eps):
            rows = summary[summary["ifm_eps"] == e].set_index("temperature").reindex(temps)
            bars = ax.bar(np.arange(len(temps)) + (j - (len(eps) - 1) / 2) * width, rows[f"acc_{f}_mean"], width,
                          yerr=rows[f"acc_{f}_sd"], capsize=3, label="baseline" if e == 0 else f"IFM ε = {e:g}",
                          color="0.6" if e == 0 else plt.cm.viridis(0.3 + 0.5 * j / max(len(eps) - 1, 1)))
            ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
        _reference_lines(ax, refs or References(), f)
        ax.set_xticks(np.arange(len(temps)), [f"τ = {t:g}" for t in temps])
        ax.set_title(f)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 108)
    axes[0, 0].set_ylabel("linear read-out accuracy (%)")
    axes[0, -1].legend(fontsize=8)
    spread = "mean ± sd over seeds" if summary["n"].min() >= 2 else "one seed per bar: no error bars"
    fig.suptitle(f"IFM vs baseline ({spread}; dashed: chance, dotted and shaded: untrained encoders' mean and "
                 "range)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def correlation_table(table: pd.DataFrame, features: Sequence[str], loss: str = "final_loss") -> pd.DataFrame:
    """Pearson r, two-sided p and 95 % CI (Fisher z) of ``loss`` vs each feature's error and of error pairs."""
    rows = []
    cols = [loss] + [f"err_{f}" for f in features]
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            ok = table[[a, b]].dropna()
            r, p, low, high = (float("nan"),) * 4
            if len(ok) >= 3 and ok[a].std() > 0 and ok[b].std() > 0:
                r, p = stats.pearsonr(ok[a], ok[b])
            if len(ok) >= 4 and np.isfinite(r):
                half = stats.norm.ppf(0.975) / np.sqrt(len(ok) - 3)
                z = np.arctanh(np.clip(r, -0.999999, 0.999999))
                low, high = np.tanh(z - half), np.tanh(z + half)
            rows.append({"x": a, "y": b, "pearson_r": float(r), "p_value": float(p), "ci_low": float(low),
                         "ci_high": float(high), "n": len(ok)})
    return pd.DataFrame(rows)


def plot_correlation(table: pd.DataFrame, features: Sequence[str], path: Path, loss: str = "final_loss",
                     refs: References | None = None) -> Path:
    """Scatter of ``loss`` vs each feature's error (coloured by τ) and the Pearson matrix of loss and errors."""
    corr = correlation_table(table, features, loss)
    fig, axes = plt.subplots(1, len(features) + 1, figsize=(3.8 * (len(features) + 1), 3.6))
    temps = np.log10(table["temperature"].to_numpy(float))
    for ax, f in zip(axes, features):
        sc = ax.scatter(table[loss], table[f"err_{f}"], c=temps, cmap="viridis", s=28,
                        vmin=temps.min(), vmax=max(temps.max(), temps.min() + 1e-9))
        r = corr[(corr["x"] == loss) & (corr["y"] == f"err_{f}")]["pearson_r"].iloc[0]
        refs_ = refs or References()
        _reference_lines(ax, refs_, f, error=True, label=f == features[0])
        if refs_.chance_loss is not None:
            ax.axvline(refs_.chance_loss, color="0.35", linestyle="-.", linewidth=1.2,
                       label="InfoNCE at chance" if f == features[0] else None)
        if f == features[0] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(f"{f}: Pearson r = {r:.2f}")
        ax.set_xlabel("final InfoNCE loss")
        ax.set_ylabel(f"{f} read-out error (%)")
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes[len(features) - 1], label="log10 τ")
    cols = [loss] + [f"err_{f}" for f in features]
    names = ["loss"] + [f"err {f}" for f in features]
    matrix = np.eye(len(cols))
    for _, row in corr.iterrows():
        i, j = cols.index(row["x"]), cols.index(row["y"])
        matrix[i, j] = matrix[j, i] = row["pearson_r"]
    ax = axes[-1]
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(cols)), names)
    for i in range(len(cols)):
        for j in range(len(cols)):
            ax.text(j, i, "–" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}", ha="center", va="center",
                    fontsize=8)
    ax.set_title("Pearson correlation")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Final InfoNCE loss vs read-out error ({len(table)} encoders)")
    fig.tight_layout()
    return _save(fig, path)
