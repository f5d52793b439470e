"""Linear read-out protocols: how one training fold's features become test-fold predictions.

Every protocol is fitted on the training part of an outer fold only; the test
part is seen only by ``predict``. Constant training columns are dropped and the
rest standardised with the training part's mean and sd (scikit-learn
``VarianceThreshold`` → ``StandardScaler``).

* ``nested`` (:data:`DEFAULT_READOUT`): a feature set with more non-constant
  columns than ``n_train // samples_per_dim`` (more dimensions than a tenth of
  the training subjects by default) gets an L2-penalised model whose penalty is
  chosen by an inner :data:`INNER_FOLDS`-fold CV inside the training part
  (``GridSearchCV`` over :data:`PENALTIES`, scaler refitted in every inner
  split, ties to the smaller penalty, then refitted on the whole training
  part): scikit-learn ``Ridge`` (inner score: mean squared error) for
  continuous outcomes, an ordered logit with ``α/2·‖β‖²`` on the slopes
  (thresholds unpenalised; inner score: mean held-out log-likelihood) for
  ordinal ones. A smaller feature set gets the unpenalised ``paper`` fit.
* ``paper``: statsmodels OLS with a constant / ordered logit on every feature,
  the paper's protocol (what COPDGene's n ≈ 9 000 allows).
* ``pca-rule``: PCA to ``max(1, n_train // samples_per_dim)`` components when
  there are more columns than that, then OLS / ordered logit (the protocol
  before nested became the default).

The protocol is declared before results are seen; a report shows the others
only as a sensitivity row.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import optimize
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from copd_ifm.evaluation.ordinal import OrderedLogit

#: Read-out protocols by name.
READOUTS = ("nested", "paper", "pca-rule")
#: The declared default protocol of ``evaluate`` (see the module docstring).
DEFAULT_READOUT = "nested"
#: Default training subjects per feature dimension (capacity rule of ``nested`` and ``pca-rule``).
SAMPLES_PER_DIM = 10
#: Penalty grid of ``nested`` (α of ``‖y − Xw‖² + α‖w‖²`` on standardised features, and of the ordered logit).
PENALTIES = np.logspace(-2, 4, 7)
#: Inner folds choosing the penalty inside a training part.
INNER_FOLDS = 5
#: Floor of a held-out level's probability in the inner score (a level absent from the inner training part has 0).
PROB_FLOOR = 1e-6


@dataclass
class Fit:
    """Test-fold predictions and what was fitted: ``model`` (e.g. ``ridge``), ``n_dims`` (columns the model
    saw), ``penalty`` (chosen α, NaN when unpenalised), ``converged`` (ordinal fits)."""

    predicted: np.ndarray
    model: str
    n_dims: int
    penalty: float = np.nan
    converged: bool = True


def check_readout(readout: str) -> str:
    """``readout`` if it names a protocol, else ValueError naming the valid ones."""
    if readout not in READOUTS:
        raise ValueError(f"unknown read-out {readout!r} (valid: {', '.join(READOUTS)})")
    return readout


def capacity(n_train: int, samples_per_dim: int) -> int:
    """Dimensions a training part of ``n_train`` subjects supports: ``max(1, n_train // samples_per_dim)``."""
    return max(1, n_train // samples_per_dim)


def _preprocess() -> list[tuple[str, object]]:
    return [("drop_constant", VarianceThreshold()), ("scale", StandardScaler())]


def feature_transform(x_train: np.ndarray, samples_per_dim: int = SAMPLES_PER_DIM, pca: bool = True) -> Pipeline:
    """Fit drop-constant → standardise → (PCA) on training features ``[n_train, D]``.

    PCA keeps :func:`capacity` components and is added only when ``pca`` and
    more non-constant columns remain than that.
    """
    informative = int((np.ptp(x_train, axis=0) > 0).sum())
    if informative == 0:
        raise ValueError("every feature is constant in the training part")
    k = capacity(x_train.shape[0], samples_per_dim)
    steps = _preprocess()
    if pca and informative > k:
        steps.append(("pca", PCA(n_components=k, random_state=0)))
    return Pipeline(steps).fit(x_train)


def fit_predict_ols(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray) -> np.ndarray:
    """OLS with a constant on ``[n_train, d]`` → predictions for ``[n_test, d]``."""
    fit = sm.OLS(y_train, sm.add_constant(z_train, has_constant="add")).fit()
    return np.asarray(fit.predict(sm.add_constant(z_test, has_constant="add")))


def _fit_ordinal(z_train: np.ndarray, y_train: np.ndarray,
                 penalty: float = 0.0) -> tuple[OrderedLogit, np.ndarray, bool]:
    """(model, parameters, converged). Penalised fits, dozens per training part in the inner CV, are
    optimised by scipy L-BFGS-B on the model's objective and score directly (several times faster than
    ``OrderedModel.fit``'s BFGS and its results object, same optimum)."""
    with warnings.catch_warnings():
        # non-convergence is reported through the returned flag; separable data overflows exp harmlessly
        warnings.simplefilter("ignore")
        model = OrderedLogit(y_train, z_train, penalty=penalty)
        if penalty > 0:
            n = len(y_train)
            res = optimize.minimize(lambda p: -model.loglike(p) / n, model.start_params,
                                    jac=lambda p: -model.score(p) / n, method="L-BFGS-B", options={"maxiter": 2000})
            params, converged = np.asarray(res.x), bool(res.success)
        else:
            # standard errors are not used: skip the (numerical) Hessian
            fit = model.fit(method="bfgs", maxiter=2000, disp=False, skip_hessian=True)
            params, converged = np.asarray(fit.params), bool(fit.mle_retvals.get("converged", False))
    return model, params, converged and bool(np.isfinite(params).all())


def _ordinal_proba(model: OrderedLogit, params: np.ndarray, z: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(model.predict(params, exog=z))


def fit_predict_ordinal(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ordinal logit on ``[n_train, d]`` with integer levels → (predicted levels ``[n_test]``, converged)."""
    model, params, converged = _fit_ordinal(z_train, y_train)
    return np.asarray(model.labels)[_ordinal_proba(model, params, z_test).argmax(axis=1)], converged


class PenalisedOrderedLogit(BaseEstimator):
    """scikit-learn face of the L2-penalised ordered logit (for ``GridSearchCV``); ``score`` is the mean
    held-out log-likelihood, a level unseen in training counted at :data:`PROB_FLOOR` for every α alike."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: np.ndarray) -> PenalisedOrderedLogit:
        self.model_, self.params_, self.converged_ = _fit_ordinal(np.asarray(X), np.asarray(y), self.alpha)
        self.labels_ = np.asarray(self.model_.labels, dtype=np.float64)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _ordinal_proba(self.model_, self.params_, np.asarray(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.labels_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        prob = self.predict_proba(X)
        column = np.searchsorted(self.labels_, y).clip(0, len(self.labels_) - 1)
        seen = self.labels_[column] == y
        picked = np.where(seen, prob[np.arange(len(y)), column], PROB_FLOOR)
        return float(np.mean(np.log(np.maximum(picked, PROB_FLOOR))))


def inner_splitter(y_train: np.ndarray, ordinal: bool) -> KFold | StratifiedKFold:
    """The inner CV of ``nested``: stratified on the level when the most common level fills every inner fold."""
    folds = min(INNER_FOLDS, len(y_train))
    if ordinal and np.unique(y_train, return_counts=True)[1].max() >= folds:
        return StratifiedKFold(folds, shuffle=True, random_state=0)
    return KFold(folds, shuffle=True, random_state=0)


def fit_nested(x_train: np.ndarray, y_train: np.ndarray, ordinal: bool) -> GridSearchCV:
    """Standardise → penalised model with α from :data:`PENALTIES` chosen by inner CV on the training part."""
    estimator = PenalisedOrderedLogit() if ordinal else Ridge()
    search = GridSearchCV(Pipeline([*_preprocess(), ("model", estimator)]), {"model__alpha": list(PENALTIES)},
                          scoring=None if ordinal else "neg_mean_squared_error",
                          cv=inner_splitter(y_train, ordinal), error_score=np.nan)
    with warnings.catch_warnings():
        # "least populated class" and failed inner fits (scored NaN) are expected on small parts
        warnings.simplefilter("ignore")
        search.fit(x_train, y_train)
    if not np.isfinite(search.cv_results_["mean_test_score"]).any():
        raise ValueError("the penalised model could not be fitted in any inner fold")
    return search


def fit_predict(readout: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, ordinal: bool,
                samples_per_dim: int = SAMPLES_PER_DIM) -> Fit:
    """Fit protocol ``readout`` on ``[n_train, D]`` features and targets, predict ``[n_test, D]``.

    ValueError when every training feature is constant or the model cannot be fitted.
    """
    check_readout(readout)
    informative = int((np.ptp(x_train, axis=0) > 0).sum())
    if informative == 0:
        raise ValueError("every feature is constant in the training part")
    if readout == "nested" and informative > capacity(len(x_train), samples_per_dim):
        search = fit_nested(x_train, y_train, ordinal)
        model = search.best_estimator_
        return Fit(np.asarray(model.predict(x_test)), "L2 ordered logit" if ordinal else "ridge", informative,
                   float(search.best_params_["model__alpha"]),
                   bool(model.named_steps["model"].converged_) if ordinal else True)
    transform = feature_transform(x_train, samples_per_dim, pca=readout == "pca-rule")
    z_train, z_test = transform.transform(x_train), transform.transform(x_test)
    reduced = "pca" in transform.named_steps
    prefix = f"PCA-{z_train.shape[1]} + " if reduced else ""
    if ordinal:
        pred, converged = fit_predict_ordinal(z_train, y_train, z_test)
        return Fit(pred, prefix + "ordered logit", z_train.shape[1], converged=converged)
    return Fit(fit_predict_ols(z_train, y_train, z_test), prefix + "OLS", z_train.shape[1])


def describe(readout: str, samples_per_dim: int) -> str:
    """One sentence: what protocol ``readout`` fits in each training part (for reports)."""
    check_readout(readout)
    prep = "constant features dropped and the rest standardised on the training part"
    if readout == "paper":
        return (f"read-out `paper`: {prep}, then OLS with a constant (continuous) or an ordered logit (ordinal) "
                f"on every feature, unpenalised (the paper's protocol for n ≈ 9 000).")
    if readout == "pca-rule":
        return (f"read-out `pca-rule`: {prep}, reduced by PCA (fitted on the training part) to n_train // "
                f"{samples_per_dim} components when there are more features than that, then OLS with a constant "
                f"(continuous) or an ordered logit (ordinal).")
    grid = f"{{{', '.join(f'{a:g}' for a in PENALTIES)}}}"
    return (f"read-out `nested`: {prep}; a feature set with more features than n_train // {samples_per_dim} gets "
            f"ridge (continuous, scikit-learn) or an L2-penalised ordered logit (ordinal, α/2·‖β‖² on the slopes), "
            f"the penalty α ∈ {grid} chosen by an inner {INNER_FOLDS}-fold CV inside the training part only "
            f"(inner score: squared error / held-out log-likelihood; scaler refitted per inner split), then refitted "
            f"on the whole training part; a smaller feature set gets the unpenalised OLS / ordered logit.")
