"""Paired comparisons of every method with a reference over shared (repeated) CV folds.

Per outcome, its primary metric (R² for continuous, accuracy for ordinal
outcomes) of method − reference in each of the ``J = r·k`` folds both scored.
The mean difference gets the Nadeau–Bengio corrected resampled t test
(:func:`copd_ifm.stats.corrected_resampled_t`): its 95 % interval and p. The
family is every outcome × method tested; p is Holm-adjusted over it, and the
*adjusted interval* is the Bonferroni interval at level ``1 − 0.05/m`` (m tests
in the family), which holds for all m at once. A difference is called an
improvement (or a loss) only when that adjusted interval excludes zero; every
such difference also has Holm p < 0.05 (Bonferroni p ≤ 0.05 implies it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from copd_ifm.stats import corrected_resampled_t, holm, min_detectable_effect

#: The metric compared per outcome kind (one per outcome keeps the family small).
PRIMARY = {"continuous": "r2", "ordinal": "accuracy"}
#: Family-wise level of the comparisons.
ALPHA = 0.05
#: Columns of the comparison table.
COLUMNS = ["method", "reference", "outcome", "metric", "folds", "method_mean", "reference_mean", "mean", "sd",
           "se", "low", "high", "p", "p_holm", "adj_level", "adj_low", "adj_high", "mde", "verdict", "note"]


def fold_differences(results: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per-fold ``method − reference`` of the primary metric, paired on (repeat, fold).

    ``results``: the per-fold rows of every method (with a ``repeat`` column).
    Returns columns method, outcome, metric, repeat, fold, n_train, n_test,
    value, reference_value, difference, failed (either fold failed).
    """
    frames = []
    for outcome, group in results.groupby("outcome", sort=False):
        metric = PRIMARY[group["kind"].iloc[0]]
        keys = ["repeat", "fold"]
        ref = group[group["method"] == reference].set_index(keys)
        if ref.empty:
            continue
        for method, part in group[group["method"] != reference].groupby("method", sort=False):
            both = part.set_index(keys).join(ref[[metric, "status"]].add_suffix("_ref"), how="inner")
            frames.append(pd.DataFrame({
                "method": method, "outcome": outcome, "metric": metric,
                "repeat": both.index.get_level_values("repeat"), "fold": both.index.get_level_values("fold"),
                "n_train": both["n_train"].to_numpy(), "n_test": both["n_test"].to_numpy(),
                "value": both[metric].to_numpy(float), "reference_value": both[f"{metric}_ref"].to_numpy(float),
                "failed": ((both["status"] == "failed") | (both["status_ref"] == "failed")).to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["method", "outcome", "metric", "repeat", "fold", "n_train", "n_test", "value",
                                     "reference_value", "difference", "failed"])
    out = pd.concat(frames, ignore_index=True)
    out["difference"] = out["value"] - out["reference_value"]
    return out


def compare(differences: pd.DataFrame, reference: str, alpha: float = ALPHA) -> pd.DataFrame:
    """:func:`fold_differences` → one row per method × outcome (columns :data:`COLUMNS`).

    A pair with a failed fold is not tested (note says why); the family for
    Holm and the Bonferroni level is every pair with a p value.
    """
    rows, tests = [], []
    for (outcome, method), part in differences.groupby(["outcome", "method"], sort=False):
        row = {"method": method, "reference": reference, "outcome": outcome, "metric": part["metric"].iloc[0],
               "folds": len(part), "method_mean": part["value"].mean(), "reference_mean": part["reference_value"].mean(),
               "note": ""}
        ratio = float(part["n_test"].mean() / part["n_train"].mean())
        if part["failed"].any():
            row["note"] = f"not tested: {int(part['failed'].sum())} of {len(part)} folds failed"
        else:
            test = corrected_resampled_t(part["difference"], ratio, alpha)
            row.update({k: test[k] for k in ("mean", "sd", "se", "low", "high", "p")})
            if np.isnan(test["p"]) and test["n"] >= 2:
                row["note"] = "the same difference in every fold: nothing to test"
        rows.append(row)
        tests.append((part["difference"], ratio))
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    family = table["p"].notna()
    level = alpha / max(int(family.sum()), 1)  # Bonferroni share of each test in the family
    table["p_holm"] = holm(table["p"].astype(float))
    table["adj_level"] = 1 - level
    for i in table.index[family]:
        adjusted = corrected_resampled_t(*tests[i], alpha=level)
        table.loc[i, ["adj_low", "adj_high"]] = adjusted["low"], adjusted["high"]
        table.at[i, "mde"] = min_detectable_effect(adjusted["se"], adjusted["df"], level)
    table["verdict"] = [verdict(low, high) for low, high in zip(table["adj_low"], table["adj_high"])]
    return table


def verdict(adj_low: float, adj_high: float) -> str:
    """``better`` / ``worse`` when the adjusted interval lies above / below zero, else ``no detectable difference``
    (``not tested`` without an interval)."""
    if not (np.isfinite(adj_low) and np.isfinite(adj_high)):
        return "not tested"
    if adj_low > 0:
        return "better"
    if adj_high < 0:
        return "worse"
    return "no detectable difference"


def _number(value: float, scale: float, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "–"
    digits = 3 if scale == 1.0 else 1
    return f"{value * scale:+.{digits}f}" if signed else f"{value * scale:.{digits}f}"


def _scale(metric: str) -> tuple[float, str]:
    return (1.0, "R²") if metric == "r2" else (100.0, "accuracy, points of %")


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as strings for the report (accuracy in points of %)."""
    rows = []
    for _, r in table.iterrows():
        scale, label = _scale(r["metric"])
        p = "–" if not np.isfinite(r["p"]) else f"{r['p']:.3g}"
        p_holm = "–" if not np.isfinite(r["p_holm"]) else f"{r['p_holm']:.3g}"
        rows.append({"outcome": f"{r['outcome']} ({label})", "method": r["method"], "folds": int(r["folds"]),
                     "difference": _number(r["mean"], scale, True),
                     "95 % CI": f"{_number(r['low'], scale, True)} … {_number(r['high'], scale, True)}",
                     "p": p, "Holm p": p_holm,
                     "adjusted CI": (f"{_number(r['adj_low'], scale, True)} … {_number(r['adj_high'], scale, True)}"
                                     if np.isfinite(r["adj_low"]) else "–"),
                     "MDE (80 %)": _number(r["mde"], scale), "verdict": r["verdict"] + (f" ({r['note']})" if r["note"] else "")})
    return pd.DataFrame(rows)


def sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per outcome: which methods beat / fall behind the reference, by the adjusted interval."""
    lines = []
    for outcome, part in table.groupby("outcome", sort=False):
        scale, label = _scale(part["metric"].iloc[0])
        reference = part["reference"].iloc[0]
        said = []
        for _, r in part.iterrows():
            if r["verdict"] == "not tested":
                said.append(f"`{r['method']}` not tested ({r['note'] or 'no interval'})")
                continue
            interval = f"{_number(r['adj_low'], scale, True)} … {_number(r['adj_high'], scale, True)}"
            word = {"better": "an improvement", "worse": "worse",
                    "no detectable difference": "no detectable difference"}[r["verdict"]]
            said.append(f"`{r['method']}` {_number(r['mean'], scale, True)} (adjusted interval {interval}, "
                        f"Holm p {r['p_holm']:.3g}): {word}")
        lines.append(f"{outcome} ({label}), against `{reference}`: " + "; ".join(said) + ".")
    return lines


def method_text(table: pd.DataFrame, repeats: int, folds: int) -> str:
    """How the comparisons were made, in one paragraph."""
    m = int(table["p"].notna().sum())
    level = 1 - ALPHA / max(m, 1)
    return (f"Paired over the same {repeats} × {folds} folds (J = {repeats * folds}): per fold, method − reference "
            f"of R² (continuous) or accuracy (ordinal). p: Nadeau–Bengio corrected resampled t test (variance × "
            f"(1/J + n_test/n_train), J − 1 df), Holm-adjusted over the family of {m} outcome × method tests. "
            f"95 % CI: the corrected t interval of one comparison; adjusted CI: the same interval at the Bonferroni "
            f"level {level * 100:.4g} % (1 − 0.05/{m}), simultaneous over the family. A difference is called an "
            f"improvement (or worse) only when the adjusted CI excludes zero, which implies Holm p < 0.05. "
            f"MDE: the smallest true difference this design detects with 80 % power at that level, given the "
            f"observed spread of the differences.")
