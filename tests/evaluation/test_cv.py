"""Cross-validated read-out: metrics against independent computations, folds and leakage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from copd_ifm.errors import UserError
from copd_ifm.evaluation import cv, readout
from copd_ifm.evaluation.ordinal import OrderedLogit
from copd_ifm.evaluation.outcomes import OUTCOMES

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")

FEV = OUTCOMES["logFEV1pp"]
CLE = OUTCOMES["CLE"]


def _sids(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


def _frame(values: np.ndarray, sids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(values, index=pd.Index(sids, name="sid"), columns=[f"f{i}" for i in range(values.shape[1])])


def _run(features, y, outcome, folds=5, seed=0, samples_per_dim=cv.SAMPLES_PER_DIM, readout=cv.DEFAULT_READOUT):
    fold_of = cv.assign_folds(y, outcome, folds, seed)
    return cv.cross_validate(features, y, fold_of, outcome, samples_per_dim, readout=readout), fold_of


def _cle_levels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Ordinal codes 0..5 with a clear majority level (2)."""
    return rng.choice(6, size=n, p=[0.1, 0.15, 0.4, 0.15, 0.1, 0.1]).astype(float)


def test_perfectly_predictable_outcomes_score_one():
    rng = np.random.default_rng(0)
    n = 50
    sids = _sids(n)
    x = rng.normal(size=(n, 3))
    y = pd.Series(2.0 + x @ np.array([0.5, -0.2, 0.1]), index=sids)
    res, _ = _run({"exact": _frame(x, sids)}, y, FEV)
    assert (res.results["r2"] > 1 - 1e-9).all()

    levels = _cle_levels(n, rng)
    ordinal = np.c_[levels, rng.normal(size=n)]  # the level itself plus a noise column
    res, _ = _run({"exact": _frame(ordinal, sids)}, pd.Series(levels, index=sids), CLE)
    assert (res.results["accuracy"] == 1.0).all() and (res.results["one_off"] == 1.0).all()


def test_shuffled_outcomes_score_like_guessing():
    rng = np.random.default_rng(1)
    n = 80
    sids = _sids(n)
    noise = _frame(rng.normal(size=(n, 3)), sids)
    y = pd.Series(rng.normal(size=n), index=sids)
    res, _ = _run({"noise": noise}, y, FEV)
    assert res.results["r2"].mean() <= 0.02

    levels = pd.Series(_cle_levels(n, rng), index=sids)
    majority = levels.value_counts(normalize=True).iloc[0]
    res, _ = _run({"noise": noise}, levels, CLE)
    assert abs(res.results["accuracy"].mean() - majority) <= 0.12
    assert (res.results["one_off"] >= res.results["accuracy"]).all()


def test_r2_and_accuracies_equal_hand_computation():
    rng = np.random.default_rng(2)
    n = 23
    sids = _sids(n)
    x = rng.normal(size=(n, 2))
    y = pd.Series(x[:, 0] - 0.5 * x[:, 1] + rng.normal(0, 0.7, n), index=sids)
    res, fold_of = _run({"m": _frame(x, sids)}, y, FEV, folds=4, samples_per_dim=1)
    for _, row in res.results.iterrows():
        test = fold_of.to_numpy() == row["fold"]
        design = np.c_[np.ones(n), x]
        coef, *_ = np.linalg.lstsq(design[~test], y.to_numpy()[~test], rcond=None)
        resid = y.to_numpy()[test] - design[test] @ coef
        total = y.to_numpy()[test] - y.to_numpy()[test].mean()
        assert row["r2"] == pytest.approx(1 - (resid @ resid) / (total @ total), rel=1e-9)

    levels = pd.Series(np.clip(np.round(2 + x[:, 0] + rng.normal(0, 0.8, n)), 0, 5), index=sids)
    res, _ = _run({"m": _frame(x, sids)}, levels, CLE, folds=3)
    for (method, fold), part in res.predictions.groupby(["method", "fold"]):
        row = res.results[(res.results["method"] == method) & (res.results["fold"] == fold)].iloc[0]
        diff = np.abs(part["predicted"] - part["observed"])
        assert row["accuracy"] == pytest.approx(np.mean(diff == 0))
        assert row["one_off"] == pytest.approx(np.mean(diff <= 1))
        assert row["one_off"] >= row["accuracy"]


def test_folds_are_shared_and_independent_of_row_order():
    rng = np.random.default_rng(3)
    n = 40
    sids = _sids(n)
    levels = pd.Series(_cle_levels(n, rng), index=sids)
    a = _frame(rng.normal(size=(n, 2)), sids)
    b = _frame(rng.normal(size=(n, 30)), sids).sample(frac=1.0, random_state=0)  # rows shuffled
    shuffled = levels.sample(frac=1.0, random_state=1)
    res, fold_of = _run({"a": a, "b": b}, shuffled, CLE, folds=4, seed=7)
    per_method = {m: p.set_index("sid")["fold"].sort_index() for m, p in res.predictions.groupby("method")}
    pd.testing.assert_series_equal(per_method["a"], per_method["b"])

    expected = np.empty(n, dtype=int)
    ordered = levels.sort_index()
    for k, (_, test) in enumerate(StratifiedKFold(4, shuffle=True, random_state=7).split(ordered, ordered)):
        expected[test] = k
    np.testing.assert_array_equal(fold_of.sort_index().to_numpy(), expected)
    np.testing.assert_array_equal(per_method["a"].to_numpy(), expected)


def test_pca_rule_is_fitted_on_training_rows_only(monkeypatch):
    rng = np.random.default_rng(4)
    n, d = 40, 12
    sids = _sids(n)
    latent = rng.normal(size=(n, 3))
    x = latent @ rng.normal(size=(3, d)) + rng.normal(0, 0.3, (n, d))
    x[:, 0] *= 50.0  # scales differ: standardising matters
    y = pd.Series(latent[:, 0] + rng.normal(0, 0.3, n), index=sids)

    seen_rows = []

    class SpyPCA(readout.PCA):
        def fit(self, X, y=None):
            seen_rows.append(X.shape[0])
            return super().fit(X, y)

    monkeypatch.setattr(readout, "PCA", SpyPCA)
    res, fold_of = _run({"m": _frame(x, sids)}, y, FEV, folds=5, readout="pca-rule")
    folds = fold_of.to_numpy()
    assert seen_rows == [int((folds != k).sum()) for k in range(5)]
    assert (res.results["n_dims"] == 32 // 10).all()

    def manual(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Standardise and PCA from ``train`` rows, OLS with intercept, predict ``test`` rows."""
        mean, sd = x[train].mean(axis=0), x[train].std(axis=0)
        z_train, z_test = (x[train] - mean) / sd, (x[test] - mean) / sd
        components = np.linalg.svd(z_train - z_train.mean(axis=0), full_matrices=False)[2][:3]
        p_train, p_test = z_train @ components.T, z_test @ components.T
        coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(p_train)), p_train], y.to_numpy()[train], rcond=None)
        return np.c_[np.ones(len(p_test)), p_test] @ coef

    leaky_differs = False
    for k in range(5):
        test = folds == k
        got = res.predictions[res.predictions["fold"] == k]["predicted"].to_numpy()
        np.testing.assert_allclose(got, manual(~test, test), rtol=1e-7, atol=1e-9)
        leaky = manual(np.ones(n, dtype=bool), test)  # statistics from every row: would differ
        leaky_differs |= not np.allclose(got, leaky, rtol=1e-3)
    assert leaky_differs


def test_degenerate_ordinal_data_gives_messages_not_tracebacks():
    rng = np.random.default_rng(5)
    n = 30
    sids = _sids(n)
    x = _frame(rng.normal(size=(n, 2)), sids)
    levels = np.r_[np.zeros(10), np.ones(10), 2 * np.ones(9), 5.0]  # level 5 has one subject
    res, fold_of = _run({"m": x}, pd.Series(levels, index=sids), CLE, folds=3)
    lone_fold = fold_of[sids[-1]]
    note = res.results.set_index("fold").loc[lone_fold, "note"]
    assert "advanced destructive absent from the training part" in note
    assert (res.results["status"] != "failed").all()

    with pytest.raises(UserError, match="at least two levels"):
        cv.assign_folds(pd.Series(np.ones(n), index=sids), CLE, 3, 0)
    with pytest.raises(UserError, match="only 4 subjects.*fewer than --folds 5"):
        cv.assign_folds(pd.Series([0.0, 1.0, 0.0, 1.0], index=sids[:4]), CLE, 5, 0)

    constant = _frame(np.ones((n, 2)), sids)
    res, _ = _run({"flat": constant}, pd.Series(levels, index=sids), CLE, folds=3)
    assert (res.results["status"] == "failed").all()
    assert res.results["note"].str.contains("every feature is constant").all()


def test_ordered_logit_gradient_and_optimum_match_statsmodels():
    from statsmodels.miscmodels.ordinal_model import OrderedModel
    from statsmodels.tools.numdiff import approx_fprime

    rng = np.random.default_rng(6)
    n = 200
    x = rng.normal(size=(n, 3))
    levels = np.array([0.0, 1.0, 3.0, 4.0, 5.0])[rng.integers(0, 5, n)]  # level 2 absent
    model = OrderedLogit(levels, x)
    for _ in range(3):
        params = rng.normal(0, 0.5, 3 + 4)
        numeric = approx_fprime(params, model.loglike, centered=True)
        np.testing.assert_allclose(model.score(params), numeric, rtol=1e-5, atol=1e-5)
    ours = model.fit(method="bfgs", maxiter=2000, disp=False, skip_hessian=True)
    reference = OrderedModel(levels, x, distr="logit").fit(method="bfgs", maxiter=2000, disp=False,
                                                           skip_hessian=True)
    np.testing.assert_allclose(ours.params, reference.params, rtol=1e-5, atol=1e-6)
