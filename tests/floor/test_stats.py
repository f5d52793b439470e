"""Nadeau–Bengio corrected resampled t test and the minimum detectable effect, against hand computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from copd_ifm.stats import corrected_resampled_t, min_detectable_effect


def test_corrected_t_equals_the_hand_formula():
    diff = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.05, 0.01])  # J = 2 × 5 folds
    ratio = 10 / 40  # n_test / n_train of a 5-fold split of 50 subjects
    got = corrected_resampled_t(diff, ratio)

    J = len(diff)
    mean = sum(diff) / J
    var = sum((d - mean) ** 2 for d in diff) / (J - 1)
    se = math.sqrt(var * (1 / J + ratio))
    t = mean / se
    assert got["n"] == J and got["df"] == J - 1
    assert got["mean"] == pytest.approx(mean)
    assert got["se"] == pytest.approx(se)
    assert got["p"] == pytest.approx(2 * (1 - stats.t.cdf(abs(t), J - 1)))
    q = stats.t.ppf(0.975, J - 1)
    assert (got["low"], got["high"]) == pytest.approx((mean - q * se, mean + q * se))
    # the correction only widens: the naive paired t has the smaller p
    assert got["p"] > stats.ttest_1samp(diff, 0).pvalue

    # a Bonferroni level over 6 tests: the same centre, the 1 − 0.05/12 quantile
    wide = corrected_resampled_t(diff, ratio, alpha=0.05 / 6)
    q6 = stats.t.ppf(1 - 0.05 / 12, J - 1)
    assert (wide["low"], wide["high"]) == pytest.approx((mean - q6 * se, mean + q6 * se))
    assert wide["p"] == pytest.approx(got["p"])


def test_corrected_t_degenerate_inputs():
    assert math.isnan(corrected_resampled_t([0.1], 0.25)["p"])
    same = corrected_resampled_t([0.1] * 5, 0.25)
    assert math.isnan(same["p"]) and same["low"] == pytest.approx(0.1)  # a constant non-zero shift: no test
    assert corrected_resampled_t([0.0] * 5, 0.25)["p"] == 1.0
    assert corrected_resampled_t([0.1, np.nan, 0.2, 0.3], 0.25)["n"] == 3  # NaN folds dropped


def test_minimum_detectable_effect_closed_form_and_power():
    se, df = 0.02, 9
    mde = min_detectable_effect(se, df)
    assert mde == pytest.approx((stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) * se)
    # independent check: the exact power of the two-sided t test at that true effect (noncentral t) is ≈ 80 %
    crit = stats.t.ppf(0.975, df)
    nc = mde / se
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=0.02)
    assert min_detectable_effect(se, df, alpha=0.005) > mde  # a stricter level needs a larger effect
    assert math.isnan(min_detectable_effect(float("nan"), df)) and math.isnan(min_detectable_effect(0.0, df))
