"""Paired and two-sample comparisons over seeds and their Holm correction, shared by every study report
(part of the floor: numpy, scipy, pandas and statsmodels only)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests


def paired_difference(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """``a − b`` over the seeds both have (series indexed by seed).

    Returns ``n``, the means ``a`` and ``b``, the mean difference ``mean``, its
    sd, the 95 % t interval ``low``/``high`` and the paired t-test ``p`` (all NaN
    below 2 pairs). The same difference in every seed (sd 0 up to rounding, common
    for accuracies counted in whole subjects) leaves nothing to test: ``p`` is 1
    when that difference is 0 and NaN otherwise, so it never counts as a win.
    """
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    diff = both["a"] - both["b"]
    n, mean = len(diff), float(diff.mean()) if len(diff) else math.nan
    out = {"n": n, "a": float(both["a"].mean()) if n else math.nan, "b": float(both["b"].mean()) if n else math.nan,
           "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    if n < 2:
        return out
    sd = float(diff.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    degenerate = sd <= 1e-9 * max(1.0, abs(mean))
    p = (1.0 if abs(mean) <= 1e-12 else math.nan) if degenerate else float(stats.ttest_rel(both["a"], both["b"]).pvalue)
    out.update(sd=sd, low=mean - half, high=mean + half, p=p)
    return out


def welch_difference(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """``mean(a) − mean(b)`` of two independent samples (Welch: unequal variances, Satterthwaite df).

    Returns ``n`` (of ``a``), ``n_b``, the means ``a`` and ``b``, the difference
    ``mean``, the 95 % Welch interval ``low``/``high`` and the two-sided ``p`` (all
    NaN with fewer than 2 values in either sample). With no spread in either
    sample there is nothing to test: ``p`` is 1 for equal means, NaN otherwise.
    """
    a, b = a.dropna().astype(float), b.dropna().astype(float)
    n, m = len(a), len(b)
    mean = float(a.mean() - b.mean()) if n and m else math.nan
    out = {"n": n, "n_b": m, "a": float(a.mean()) if n else math.nan, "b": float(b.mean()) if m else math.nan,
           "mean": mean, "low": math.nan, "high": math.nan, "p": math.nan}
    if n < 2 or m < 2:
        return out
    va, vb = float(a.var(ddof=1)) / n, float(b.var(ddof=1)) / m
    se = math.sqrt(va + vb)
    if se <= 1e-9 * max(1.0, abs(mean)):
        out.update(low=mean, high=mean, p=1.0 if abs(mean) <= 1e-12 else math.nan)
        return out
    df = (va + vb) ** 2 / (va ** 2 / (n - 1) + vb ** 2 / (m - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    out.update(low=mean - half, high=mean + half, p=float(2 * stats.t.sf(abs(mean) / se, df)))
    return out


def holm(p: pd.Series, family: pd.Series | None = None) -> pd.Series:
    """Holm-adjusted ``p`` over one family of tests: the rows in ``family`` (boolean, same index; default
    every row) whose p is not NaN. Every other row is NaN."""
    members = p.notna() if family is None else family & p.notna()
    adjusted = pd.Series(np.nan, index=p.index)
    if members.any():
        adjusted[members] = multipletests(p[members].astype(float), method="holm")[1]
    return adjusted


def corrected_resampled_t(diff: np.ndarray | pd.Series, test_train_ratio: float,
                          alpha: float = 0.05) -> dict[str, float]:
    """Nadeau–Bengio corrected resampled t test of the mean of ``J`` per-fold paired differences.

    ``diff``: one difference per fold of an ``r × k`` repeated k-fold (``J = r·k``
    values, NaN dropped); ``test_train_ratio``: ``n_test / n_train`` of a fold.
    Folds share training subjects, so the plain ``s²/J`` understates the variance of
    the mean; Nadeau & Bengio (2003) use ``s²·(1/J + n_test/n_train)``, with
    ``J − 1`` degrees of freedom. Returns ``n`` (J), ``mean``, ``sd`` (ddof 1),
    ``se`` (the corrected standard error), ``df``, the ``1 − alpha`` interval
    ``low``/``high`` and the two-sided ``p`` (all but ``n``/``mean`` NaN below 2
    folds). No spread leaves nothing to test: ``p`` is 1 when the mean is 0 and NaN
    otherwise, as in :func:`paired_difference`.
    """
    values = np.asarray(pd.Series(diff, dtype=float).dropna())
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    out = {"n": n, "mean": mean, "sd": math.nan, "se": math.nan, "df": math.nan, "low": math.nan,
           "high": math.nan, "p": math.nan}
    if n < 2:
        return out
    sd = float(values.std(ddof=1))
    se = sd * math.sqrt(1.0 / n + test_train_ratio)
    out.update(sd=sd, se=se, df=n - 1)
    if sd <= 1e-9 * max(1.0, abs(mean)):
        out.update(low=mean, high=mean, p=1.0 if abs(mean) <= 1e-12 else math.nan)
        return out
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    out.update(low=mean - half, high=mean + half, p=float(2 * stats.t.sf(abs(mean) / se, n - 1)))
    return out


def min_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided t test at ``alpha`` detects with probability ``power``.

    ``(t_{1−α/2, df} + t_{power, df}) · se`` (the usual shifted-t approximation; the
    noncentral t gives almost the same). With :func:`corrected_resampled_t`, pass
    its corrected ``se`` and ``df`` (and the family's adjusted ``alpha``).
    """
    if not (np.isfinite(se) and np.isfinite(df) and df >= 1 and se > 0):
        return math.nan  # no spread: no power statement to make
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)
