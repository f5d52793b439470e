"""IFM − baseline on every outcome, twice: across seeds and within seeds over the shared repeated folds.

For seed ``s``, ε and outcome, ``d[s, r, k]`` is IFM's primary score (R² or
accuracy) minus the same seed's baseline on fold ``k`` of repeat ``r`` (both
read out on the same split). Two tests per (outcome, ε), each Holm-adjusted
over the family of outcomes × ε:

* **seeds**: each seed's mean over its folds, paired t over the ``S`` seeds
  (:func:`copd_ifm.stats.paired_difference`): is the gain larger than the
  seed-to-seed variation of training?
* **folds**: the seed-mean difference per fold, Nadeau–Bengio corrected
  resampled t over the ``J = r·k`` folds (:func:`copd_ifm.stats.corrected_resampled_t`),
  with the Bonferroni interval at ``1 − α/m`` (``m`` tests) and the smallest
  effect it detects at 80 % power (:func:`copd_ifm.stats.min_detectable_effect`).

Verdict (fixed before any result was seen): ``improvement`` / ``worse`` only when
the folds test's adjusted interval excludes zero *and* the seeds test agrees
(Holm p < α, same sign); an adjusted interval excluding zero alone is reported
as a difference on these seeds' folds that the seeds do not confirm. The
report states this in :data:`METHOD`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from copd_ifm.evaluation.compare import fold_differences
from copd_ifm.stats import corrected_resampled_t, holm, min_detectable_effect, paired_difference

ALPHA = 0.05
BASELINE = "baseline"
METHOD = ("For each seed, ε and outcome, IFM's score (R² or accuracy) minus the same seed's baseline on the same "
          "fold. Two tests per outcome × ε, each Holm-adjusted over the family of outcomes × ε. **Seeds**: each "
          "seed's mean difference over its folds, paired t over the seeds (is the gain larger than the "
          "seed-to-seed variation of training?). **Folds**: the seed-mean difference per fold, Nadeau–Bengio "
          "corrected resampled t over the repeated folds (the folds share training subjects), with the "
          "Bonferroni-adjusted interval (level 1 − 0.05/m for m tests) and the smallest effect it detects at "
          "80 % power (MDE). Verdict, fixed before any result was seen: *improvement* (or *worse*) only when "
          "the folds test's adjusted interval excludes zero and the seeds test agrees (Holm p < 0.05, same "
          "sign); an adjusted interval excluding zero alone is reported as a difference on these seeds' folds "
          "that the seeds do not confirm.")


def label(epsilon: float) -> str:
    return BASELINE if epsilon == 0 else f"IFM ε={epsilon:g}"


def seed_differences(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Per-fold IFM − baseline of every seed (``fold_differences`` per seed, with a ``seed`` and ``epsilon`` column).

    ``per_fold``: trained runs' per-fold rows of one feature set with columns method (``baseline``/``ifm``),
    epsilon, seed, outcome, kind, repeat, fold, n_train, n_test, the metrics and status.
    """
    frames = []
    for seed, rows in per_fold.groupby("seed", sort=True):
        labelled = rows.assign(method=[label(e) for e in rows["epsilon"]])
        diff = fold_differences(labelled, BASELINE)
        if diff.empty:   # this seed's baseline or IFM runs have not finished
            continue
        frames.append(diff.assign(seed=seed, epsilon=[float(m.split("=")[1]) for m in diff["method"]]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _seed_test(part: pd.DataFrame, level: float) -> dict[str, float]:
    means = part.groupby("seed").agg(ifm=("value", "mean"), base=("reference_value", "mean"))
    test = paired_difference(means["ifm"], means["base"])
    n = test["n"]
    se = test["sd"] / math.sqrt(n) if n >= 2 else math.nan
    return {"seeds": n, "seed_mean": test["mean"], "seed_low": test["low"], "seed_high": test["high"],
            "seed_p": test["p"], "seed_mde": min_detectable_effect(se, n - 1, level) if n >= 2 else math.nan}


def _fold_test(part: pd.DataFrame, level: float) -> dict[str, float]:
    per_fold = part.groupby(["repeat", "fold"]).agg(d=("difference", "mean"), n_train=("n_train", "mean"),
                                                    n_test=("n_test", "mean"))
    ratio = float(per_fold["n_test"].mean() / per_fold["n_train"].mean())
    test = corrected_resampled_t(per_fold["d"], ratio, ALPHA)
    adjusted = corrected_resampled_t(per_fold["d"], ratio, level)
    return {"folds": test["n"], "mean": test["mean"], "low": test["low"], "high": test["high"], "p": test["p"],
            "adj_low": adjusted["low"], "adj_high": adjusted["high"],
            "mde": min_detectable_effect(adjusted["se"], adjusted["df"], level)}


def compare(per_fold: pd.DataFrame) -> pd.DataFrame:
    """One row per outcome × ε: scores, the seeds test, the folds test, Holm p of both and the verdict."""
    return compare_differences(seed_differences(per_fold))


def compare_differences(diffs: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare` from :func:`seed_differences` already computed."""
    if diffs.empty:
        return pd.DataFrame()
    diffs = diffs[~diffs["failed"].astype(bool)]
    groups = list(diffs.groupby(["outcome", "epsilon"], sort=False))
    level = ALPHA / max(len(groups), 1)          # Bonferroni share of each test in the family
    rows = []
    for (outcome, eps), part in groups:
        rows.append({"outcome": outcome, "epsilon": eps, "metric": part["metric"].iloc[0],
                     "ifm": part["value"].mean(), "baseline": part["reference_value"].mean(),
                     **_fold_test(part, level), **_seed_test(part, level)})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].astype(float))
    table["seed_p_holm"] = holm(table["seed_p"].astype(float))
    table["verdict"] = [verdict(r) for r in table.itertuples()]
    return table


def verdict(row) -> str:
    """The verdict rule of the module docstring."""
    if not (np.isfinite(row.adj_low) and np.isfinite(row.adj_high)):
        return "not tested"
    sign = 1 if row.adj_low > 0 else -1 if row.adj_high < 0 else 0
    if sign == 0:
        return "no detectable difference"
    seeds_agree = row.seed_p_holm < ALPHA and np.sign(row.seed_mean) == sign
    word = "improvement" if sign > 0 else "worse"
    return word if seeds_agree else f"{'higher' if sign > 0 else 'lower'} on these seeds' folds, not confirmed across seeds"

