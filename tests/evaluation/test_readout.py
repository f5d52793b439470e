"""Read-out protocols: ridge and its inner CV against numpy, the penalised ordered logit against an
independent likelihood, and no test-fold information reaching any fitted step."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.special import expit
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from copd_ifm.evaluation import cv, readout
from copd_ifm.evaluation.ordinal import OrderedLogit
from copd_ifm.evaluation.outcomes import OUTCOMES

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")

FEV = OUTCOMES["logFEV1pp"]
CLE = OUTCOMES["CLE"]


def _standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = train.mean(axis=0), train.std(axis=0)
    return (train - mean) / sd, (other - mean) / sd


def _ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """Closed form on features standardised by the training rows: w = (ZᵀZ + αI)⁻¹ Zᵀ(y − ȳ), intercept ȳ."""
    z, z_test = _standardise(x_train, x_test)
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y_train - y_train.mean()))
    return y_train.mean() + z_test @ w


def test_nested_ridge_equals_closed_form_with_the_brute_force_penalty():
    rng = np.random.default_rng(0)
    n, d = 40, 25  # 25 features > 40 // 10: the penalised branch
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d)
    y = x[:, :3] @ np.array([0.05, -0.1, 0.02]) + rng.normal(0, 1, n)
    x_train, y_train, x_test = x[:32], y[:32], x[32:]

    inner = list(KFold(5, shuffle=True, random_state=0).split(x_train))
    mse = [np.mean([np.mean((_ridge(x_train[a], y_train[a], x_train[b], alpha) - y_train[b]) ** 2)
                    for a, b in inner]) for alpha in readout.PENALTIES]
    best = readout.PENALTIES[int(np.argmin(mse))]

    fit = readout.fit_predict("nested", x_train, y_train, x_test, ordinal=False)
    assert fit.model == "ridge" and fit.penalty == best and fit.n_dims == d
    np.testing.assert_allclose(fit.predicted, _ridge(x_train, y_train, x_test, best), rtol=1e-8, atol=1e-10)

    # scikit-learn's RidgeCV on the same splits picks the same α when the scaling is fitted once (it is
    # nearly scale-free here: the inner folds' sds differ little)
    z_train, _ = _standardise(x_train, x_test)
    reference = RidgeCV(alphas=readout.PENALTIES, cv=KFold(5, shuffle=True, random_state=0),
                        scoring="neg_mean_squared_error").fit(z_train, y_train)
    assert reference.alpha_ == best


def test_paper_is_ols_on_every_feature_and_nested_falls_back_to_it():
    rng = np.random.default_rng(1)
    n, d = 60, 4
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.0, -0.5, 0.2, 0.0]) + rng.normal(0, 0.5, n)
    design = np.c_[np.ones(48), x[:48]]
    coef = np.linalg.lstsq(design, y[:48], rcond=None)[0]
    expected = np.c_[np.ones(12), x[48:]] @ coef
    for name in ("paper", "nested"):  # 4 features ≤ 48 // 10: nested fits the unpenalised model
        fit = readout.fit_predict(name, x[:48], y[:48], x[48:], ordinal=False)
        assert fit.model == "OLS" and np.isnan(fit.penalty)
        np.testing.assert_allclose(fit.predicted, expected, rtol=1e-8)
    assert readout.fit_predict("pca-rule", x[:48], y[:48], x[48:], ordinal=False).model == "OLS"
    assert readout.fit_predict("pca-rule", x[:48], y[:48], x[48:], False, samples_per_dim=20).model == "PCA-2 + OLS"
    with pytest.raises(ValueError, match="valid: nested, paper, pca-rule"):
        readout.fit_predict("lasso", x[:48], y[:48], x[48:], ordinal=False)


def _neg_loglike(params: np.ndarray, x: np.ndarray, level: np.ndarray, n_levels: int, alpha: float) -> float:
    """Ordered logit written out: P(y = j) = σ(t_{j+1} − xβ) − σ(t_j − xβ), thresholds θ₁ + Σ exp(δ)."""
    k = x.shape[1]
    beta, theta = params[:k], params[k:]
    cuts = np.r_[-np.inf, np.cumsum(np.r_[theta[0], np.exp(theta[1:])]), np.inf]
    eta = x @ beta
    prob = expit(cuts[level + 1] - eta) - expit(cuts[level] - eta)
    return -np.sum(np.log(prob)) + 0.5 * alpha * beta @ beta


def test_penalised_ordered_logit_matches_an_independent_likelihood():
    from statsmodels.tools.numdiff import approx_fprime

    rng = np.random.default_rng(2)
    n, d = 80, 6
    x = rng.normal(size=(n, d))
    level = np.clip(np.round(1.5 + x[:, 0] - 0.5 * x[:, 1] + rng.normal(0, 0.8, n)), 0, 3).astype(int)
    alpha = 3.0
    model = OrderedLogit(level.astype(float), x, penalty=alpha)
    params = rng.normal(0, 0.3, d + 3)
    assert -model.loglike(params) == pytest.approx(_neg_loglike(params, x, level, 4, alpha), rel=1e-10)
    np.testing.assert_allclose(model.score(params), approx_fprime(params, model.loglike, centered=True),
                               rtol=1e-5, atol=1e-5)

    ours = readout.PenalisedOrderedLogit(alpha).fit(x, level.astype(float))
    independent = optimize.minimize(_neg_loglike, np.r_[np.zeros(d), -1.0, 0.0, 0.0], args=(x, level, 4, alpha),
                                    method="BFGS", options={"gtol": 1e-8})
    np.testing.assert_allclose(ours.params_, independent.x, rtol=1e-4, atol=1e-4)
    assert ours.converged_
    # stronger penalty, smaller slopes; thresholds are not shrunk towards 0
    strong = readout.PenalisedOrderedLogit(1e4).fit(x, level.astype(float))
    assert np.abs(strong.params_[:d]).max() < 0.01 * np.abs(ours.params_[:d]).max()
    # held-out score: mean log-probability of the true level, an unseen level at the floor
    prob = ours.predict_proba(x[:5])
    assert ours.score(x[:5], level[:5].astype(float)) == pytest.approx(np.mean(np.log(prob[np.arange(5), level[:5]])))
    assert ours.score(x[:1], np.array([7.0])) == pytest.approx(np.log(readout.PROB_FLOOR))


MARK = 1e9  # planted in the test fold only: any fitted step that sees it sees the test fold


def _spy(monkeypatch) -> list[str]:
    """Record every fit whose input holds a planted value (raw or standardised: either is huge)."""
    seen: list[str] = []

    def watch(owner, name: str, arg: int = 1):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            data = np.asarray(args[arg], dtype=np.float64)
            if np.nanmax(np.abs(data)) > 1e4:
                seen.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    for owner in (readout.StandardScaler, readout.VarianceThreshold, readout.PCA, readout.Ridge,
                  readout.PenalisedOrderedLogit):
        watch(owner, "fit")
    watch(readout.sm, "OLS", arg=1)
    return seen


def _fold_fits(name: str, x: np.ndarray, target: pd.Series, outcome, plant) -> list[np.ndarray]:
    """Test-fold predictions of ``fit_predict`` over 5 shared folds, ``plant(x, test, y)`` altering the features
    of each fold's split (the same call ``cross_validate`` makes per fold)."""
    folds = cv.assign_folds(target, outcome, 5, 0).loc[target.index].to_numpy()
    y = target.to_numpy()
    out = []
    for k in range(5):
        test = folds == k
        planted = plant(x.copy(), test, y)
        out.append(readout.fit_predict(name, planted[~test], y[~test], planted[test], outcome.ordinal).predicted)
    return out


@pytest.mark.parametrize("name", readout.READOUTS)
def test_no_test_fold_value_reaches_any_fitted_step(monkeypatch, name):
    rng = np.random.default_rng(3)
    n = 50
    sids = [f"S{i:03d}" for i in range(n)]
    x = rng.normal(size=(n, 12))
    y = pd.Series(x[:, 0] + rng.normal(0, 0.5, n), index=sids)
    levels = pd.Series(np.clip(np.round(2 + x[:, 0] + rng.normal(0, 0.7, n)), 0, 5), index=sids)
    seen = _spy(monkeypatch)

    def plant(features, test, _):
        features[test, 5] = MARK  # the test fold's values of one feature: for predict only
        return features

    for outcome, target in ((FEV, y), (CLE, levels)):
        _fold_fits(name, x, target, outcome, plant)
    assert seen == []
    # the spy does see a leak: the same fits with the marker in a training row
    _fold_fits(name, x, y, FEV, lambda f, test, _: (f.__setitem__((np.flatnonzero(~test)[0], 5), MARK), f)[1])
    assert seen


@pytest.mark.parametrize("name", readout.READOUTS)
def test_test_fold_outcome_planted_in_a_feature_is_not_learned(name):
    """A feature equal to the outcome in the test fold and constant in the training part, through
    ``cross_validate``: a read-out whose feature screening, scaling, penalty choice, PCA or model saw the test
    fold would keep and use it (R² near 1); an honest one drops it and scores noise."""
    rng = np.random.default_rng(4)
    n = 60
    sids = pd.Index([f"S{i:03d}" for i in range(n)], name="sid")
    y = pd.Series(rng.normal(size=n), index=sids)
    folds = cv.assign_folds(y, FEV, 5, 0).to_numpy()
    x = rng.normal(size=(n, 20))
    for k in range(5):
        test = folds == k
        planted = x.copy()
        planted[:, 0] = 0.0  # constant in the training part: an honest read-out drops it
        planted[test, 0] = y.to_numpy()[test]
        # fold 0 = fold k is scored; fold 1 (the rest, scored on a 12-subject fit) is ignored
        split = pd.Series(np.where(test, 0, 1), index=sids)
        res = cv.cross_validate({"m": pd.DataFrame(planted, index=sids)}, y, split, FEV, readout=name).results
        assert res.set_index("fold").loc[0, "r2"] < 0.5


def test_penalised_ordered_logit_fits_more_features_than_subjects():
    """n ≤ p: the columns span the constant. statsmodels refuses that as an implicit constant; with the L2
    penalty the fit is identified and must go through (an untrained encoder's 128 features on ~38 subjects)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 40))
    y = np.repeat([0.0, 1.0, 2.0, 3.0], 5)
    with pytest.raises(ValueError, match="constant"):
        OrderedLogit(y, x)                                   # unpenalised: still checked
    model = readout.PenalisedOrderedLogit(alpha=10.0).fit(x, y)
    assert model.converged_ and np.isfinite(model.params_).all()
    prob = model.predict_proba(x)
    assert prob.shape == (20, 4) and np.allclose(prob.sum(1), 1.0)
