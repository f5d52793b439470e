"""Figures of the CT shortcut study: read-out vs ε (``shortcut.png``) and the regional map (``regions.png``)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from copd_ifm.cohort.atlas import atlas_lung_array  # noqa: E402
from copd_ifm.ct.densitometry import LAA_THRESHOLD_HU  # noqa: E402
from copd_ifm.ct.store import PatchStore  # noqa: E402
from copd_ifm.evaluation.outcomes import Outcome  # noqa: E402
from copd_ifm.evaluation.plots import _grid, _save  # noqa: E402
from copd_ifm.studies import ct_runs  # noqa: E402
from copd_ifm.studies.grid import RunPlan  # noqa: E402

CONTROLS = (("densitometry", "k", "-"), ("untrained", "0.45", ":"), ("untrained_patch", "0.65", "-."),
            ("chance", "tab:red", "--"))
LEVEL_STYLE = {"graph": "-o", "patch": "--s"}


def _primary(kind: str) -> str:
    return "r2" if kind == "continuous" else "accuracy"


def plot_shortcut(results: pd.DataFrame, outcomes: list[Outcome], path: Path) -> Path:
    """One panel per target: trained read-out (mean ± sd over seeds) vs ε per level and τ; controls as lines."""
    fig, axes = _grid(len(outcomes))
    trained = results[results["method"].isin(["baseline", "ifm"])]
    eps = sorted(trained["epsilon"].dropna().unique())
    position = {e: i for i, e in enumerate(eps)}
    for ax, outcome in zip(axes, outcomes):
        metric = _primary(outcome.kind)
        rows_t = results[(results["latent"] == outcome.name) & (results["metric"] == metric)]
        for (tau, level), group in rows_t[rows_t["method"].isin(["baseline", "ifm"])].groupby(["tau", "features"]):
            summary = group.groupby("epsilon")["value"].agg(["mean", "std"]).reset_index()
            ax.errorbar([position[e] for e in summary["epsilon"]], summary["mean"], yerr=summary["std"].fillna(0),
                        fmt=LEVEL_STYLE.get(level, "-^"), capsize=3, label=f"{level} τ={tau:g}")
        for name, colour, style in CONTROLS:
            values = rows_t[rows_t["features"] == name]["value"]
            if len(values):
                ax.axhline(values.mean(), color=colour, linestyle=style, linewidth=1, label=name)
        ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps])
        ax.set_xlabel("IFM ε (0 = baseline)")
        ax.set_ylabel("CV R²" if metric == "r2" else "CV accuracy")
        ax.set_title(outcome.name)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def landmark_laa(store: PatchStore) -> np.ndarray:
    """Share of patch voxels < −950 HU per landmark, mean over the store's subjects: ``[L]``."""
    total = np.zeros(store.n_landmarks)
    for sid in store.sids:
        total += (np.asarray(store.patches(sid)) < LAA_THRESHOLD_HU).mean(axis=(1, 2, 3))
    return total / len(store.sids)


def _regions(plans: list[RunPlan], maps: dict[str, pd.DataFrame], method: str,
             epsilon: float | None) -> pd.Series | None:
    """Mean over seeds of the per-landmark R² of ``method`` (at ``epsilon``) → ``[L]`` or None."""
    frames = [maps[p.run_id].set_index("landmark")["r2"] for p in plans
              if ct_runs.method(p) == method and (epsilon is None or ct_runs.epsilon(p) == epsilon)]
    return pd.concat(frames, axis=1).mean(axis=1) if frames else None


def plot_regions(plans: list[RunPlan], maps: dict[str, pd.DataFrame], store: PatchStore, latent: str,
                 path: Path) -> Path:
    """Coronal maps of per-landmark read-out R² (baseline, largest IFM ε, untrained) beside measured %LAA-950.

    ``maps``: run id → that run's regional read-out (columns landmark, r2) for every run in ``plans``.

    Each landmark's value is drawn at its patch centre in the atlas (x, z),
    averaged over the landmarks along the antero-posterior axis; the last panel
    gives the profiles along z (cranio-caudal height).
    """
    spacing = float(store.config["spacing_mm"])
    table = store.landmark_table
    half = store.patch_size / 2.0
    lung = atlas_lung_array(spacing).any(axis=1)                      # [z, x] coronal silhouette
    eps = sorted({ct_runs.epsilon(p) for p in plans if ct_runs.method(p) == "ifm"})
    maps: list[tuple[str, pd.Series | None, str]] = [
        ("measured share < −950 HU (data)", pd.Series(landmark_laa(store)), "magma"),
        ("baseline (ε = 0)", _regions(plans, maps, "baseline", None), "viridis"),
        (f"IFM ε = {eps[-1]:g}" if eps else "IFM", _regions(plans, maps, "ifm", eps[-1]) if eps else None, "viridis"),
        ("untrained encoder", _regions(plans, maps, "untrained", None), "viridis")]
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.3 * (len(maps) + 1), 3.6))
    r2_values = pd.concat([m for _, m, c in maps if m is not None and c == "viridis"]) if any(
        m is not None for _, m, c in maps if c == "viridis") else pd.Series([0.0])
    vmin, vmax = min(0.0, float(r2_values.min())), max(0.05, float(r2_values.max()))
    z_profile = {}
    for ax, (title, values, cmap) in zip(axes, maps):
        ax.imshow(lung, origin="lower", cmap="Greys", alpha=0.25, aspect="equal")
        ax.set_title(title if cmap == "magma" else f"{title}\nR² of {latent}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if values is None:
            ax.text(0.5, 0.5, "no finished run", ha="center", transform=ax.transAxes)
            continue
        frame = table.assign(value=values.to_numpy()).groupby(["i", "k"], as_index=False)["value"].mean()
        limits = {} if cmap == "magma" else {"vmin": vmin, "vmax": vmax}
        dots = ax.scatter(frame["i"] + half, frame["k"] + half, c=frame["value"], cmap=cmap, s=40, **limits)
        fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.02)
        z_profile[title] = table.assign(value=values.to_numpy()).groupby("k")["value"].mean()
    ax = axes[-1]
    for title, profile in z_profile.items():
        if title.startswith("measured"):
            continue
        ax.plot(profile.to_numpy(), (profile.index.to_numpy() + half) * spacing, "-o", label=title, markersize=3)
    ax.set_xlabel(f"R² of {latent}")
    ax.set_ylabel("height z (mm, atlas; up = cranial)")
    if "measured share < −950 HU (data)" in z_profile:
        twin = ax.twiny()
        laa = z_profile["measured share < −950 HU (data)"]
        twin.plot(laa.to_numpy(), (laa.index.to_numpy() + half) * spacing, color="tab:red", linestyle=":")
        twin.set_xlabel("share < −950 HU (red, dotted)", color="tab:red")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
