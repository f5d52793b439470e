"""Cross-validated linear read-out: folds, feature reduction and the statsmodels models.

* Folds: seeded ``KFold`` (continuous outcomes) or ``StratifiedKFold`` on the
  level (ordinal outcomes), both shuffled, computed once per outcome over the
  subjects sorted by ``sid`` and reused for every feature set.
* Features, fitted on the training part of each fold only (scikit-learn
  ``Pipeline``): constant columns dropped, standardised, and reduced by PCA
  to ``max(1, n_train // samples_per_dim)`` components when there are more
  columns than that (default 10 training subjects per dimension, the usual
  one-in-ten rule for regression).
* Continuous: statsmodels ``OLS`` with a constant; R² on the held-out fold,
  ``1 − SS_res/SS_tot`` with ``SS_tot`` around the *test fold's* mean
  (``sklearn.metrics.r2_score``), so predicting the training mean scores ≈ 0
  or below and R² can be negative.
* Ordinal: statsmodels ``OrderedModel`` (logit link, analytic gradient: :class:`OrderedLogit`); the predicted level is
  the one of highest predicted probability; accuracy and 1-off accuracy
  (share of predictions within one level of the truth). The model can only
  predict levels seen in its training part; a level present only in the test
  part is therefore always missed there, for every method alike, and the fold
  row says so in ``note``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import statsmodels.api as sm
from sklearn.decomposition import PCA
from sklearn.feature_selection import VarianceThreshold
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.miscmodels.ordinal_model import OrderedModel

from copd_ifm.errors import UserError
from copd_ifm.evaluation.outcomes import Outcome

#: Default training subjects per feature dimension before PCA reduces the features.
SAMPLES_PER_DIM = 10

#: Columns of the per-fold results table.
RESULT_COLUMNS = ["method", "outcome", "kind", "fold", "n_train", "n_test", "n_features", "n_dims",
                  "r2", "accuracy", "one_off", "status", "note"]


def assign_folds(y: pd.Series, outcome: Outcome, n_folds: int, seed: int) -> pd.Series:
    """Test-fold number ``0 … n_folds−1`` of every subject of ``y`` (sid-indexed, no NaN).

    Depends only on the sids, the values and ``seed`` (not on the row order or
    the feature set), so every method is scored on the same splits.
    """
    if n_folds < 2:
        raise UserError(f"--folds must be at least 2, got {n_folds}")
    y = y.sort_index()
    if len(y) < n_folds:
        raise UserError(f"{outcome.name}: only {len(y)} subjects have the outcome and every feature set, "
                        f"fewer than --folds {n_folds} (use fewer folds or check the manifest and features)")
    if outcome.ordinal:
        if y.nunique() < 2:
            raise UserError(f"{outcome.name}: all {len(y)} usable subjects have level {y.iloc[0]:g}; "
                            f"an ordinal read-out needs at least two levels (drop this outcome)")
        largest = int(y.value_counts().max())
        if largest < n_folds:
            # StratifiedKFold needs some level with at least one subject per fold
            raise UserError(f"{outcome.name}: its most common level has only {largest} subjects, fewer than "
                            f"--folds {n_folds} (use --folds {max(2, largest)} or drop this outcome)")
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": reported per fold instead
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y.to_numpy())):
            folds[test] = k
    return pd.Series(folds, index=y.index, name="fold")


def feature_transform(x_train: np.ndarray, samples_per_dim: int = SAMPLES_PER_DIM) -> Pipeline:
    """Fit drop-constant → standardise → (PCA) on training features ``[n_train, D]``.

    PCA keeps ``max(1, n_train // samples_per_dim)`` components and is added
    only when more non-constant columns remain than that.
    """
    n_train = x_train.shape[0]
    informative = int((np.ptp(x_train, axis=0) > 0).sum())
    if informative == 0:
        raise ValueError("every feature is constant in the training part")
    k = max(1, n_train // samples_per_dim)
    steps: list[tuple[str, object]] = [("drop_constant", VarianceThreshold()), ("scale", StandardScaler())]
    if informative > k:
        steps.append(("pca", PCA(n_components=k, random_state=0)))
    return Pipeline(steps).fit(x_train)


def fit_predict_ols(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray) -> np.ndarray:
    """OLS with a constant on ``[n_train, d]`` → predictions for ``[n_test, d]``."""
    fit = sm.OLS(y_train, sm.add_constant(z_train, has_constant="add")).fit()
    return np.asarray(fit.predict(sm.add_constant(z_test, has_constant="add")))


class OrderedLogit(OrderedModel):
    """statsmodels ``OrderedModel`` with the logit link and an analytic score.

    ``OrderedModel`` differentiates its log-likelihood numerically, one
    evaluation per parameter: tens of seconds to minutes per fit at COPDGene size
    (n ≈ 7000, 128 features). The likelihood, parameters and optimum are
    unchanged; only the gradient is exact and cheap.
    """

    def __init__(self, endog: np.ndarray, exog: np.ndarray) -> None:
        super().__init__(endog, exog, distr="logit")

    def score(self, params: np.ndarray) -> np.ndarray:
        """Gradient of the log-likelihood, ``[k_vars + k_levels − 1]``.

        Parameters are (β, θ₁, δ₂ … δ_{K−1}) with thresholds
        ``t_j = θ₁ + Σ_{2≤i≤j} exp(δ_i)``; a subject at level ``y`` has
        ``ℓ = log(F(t_{y+1} − xβ) − F(t_y − xβ))`` (``t_0 = −∞``, ``t_K = +∞``).
        """
        params = np.asarray(params, dtype=np.float64)
        k = self.k_levels - 1
        low, upp = self._bounds(params)
        prob = self.prob(low, upp) + 1e-20  # the same guard as loglikeobs
        f_low, f_upp = self.pdf(low) / prob, self.pdf(upp) / prob  # pdf(±inf) = 0 at the open ends
        level = np.asarray(self.endog, dtype=np.int64)
        # dℓ/dt_j summed over subjects, j = 0..K; the infinite ends t_0, t_K are dropped
        d_thresh = (np.bincount(level + 1, f_upp, minlength=k + 2) - np.bincount(level, f_low, minlength=k + 2))[1:-1]
        tail = d_thresh[::-1].cumsum()[::-1]  # Σ_{j≥i} dℓ/dt_j
        d_theta = np.r_[tail[:1], tail[1:] * np.exp(params[-k:][1:])]
        return np.r_[self.exog.T @ (f_low - f_upp), d_theta]


def fit_predict_ordinal(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ordinal logit on ``[n_train, d]`` with integer levels → (predicted levels ``[n_test]``, converged)."""
    with warnings.catch_warnings():
        # non-convergence is reported through the returned flag; separable data overflows exp harmlessly
        warnings.simplefilter("ignore")
        model = OrderedLogit(y_train, z_train)
        # standard errors are not used: skip the (numerical) Hessian
        fit = model.fit(method="bfgs", maxiter=2000, disp=False, skip_hessian=True)
        prob = np.asarray(fit.model.predict(fit.params, exog=z_test))
    converged = bool(fit.mle_retvals.get("converged", False)) and bool(np.isfinite(fit.params).all())
    return np.asarray(model.labels)[prob.argmax(axis=1)], converged


@dataclass
class CVResult:
    """Per-fold metrics (columns :data:`RESULT_COLUMNS`) and out-of-fold predictions
    (columns method, outcome, sid, fold, observed, predicted)."""

    results: pd.DataFrame
    predictions: pd.DataFrame


def _fold(x: np.ndarray, y: np.ndarray, train: np.ndarray, outcome: Outcome,
          samples_per_dim: int) -> tuple[dict[str, object], np.ndarray]:
    """Fit on ``train`` rows, score on the rest → (metric fields, test predictions)."""
    test = ~train
    row: dict[str, object] = {"n_train": int(train.sum()), "n_test": int(test.sum()), "n_features": x.shape[1],
                              "n_dims": np.nan, "r2": np.nan, "accuracy": np.nan, "one_off": np.nan,
                              "status": "ok", "note": ""}
    pred = np.full(int(test.sum()), np.nan)
    try:
        transform = feature_transform(x[train], samples_per_dim)
        z_train, z_test = transform.transform(x[train]), transform.transform(x[test])
        row["n_dims"] = z_train.shape[1]
        if outcome.ordinal:
            seen = np.unique(y[train])
            if len(seen) < 2:
                raise ValueError(f"only level {seen[0]:g} in the training part")
            pred, converged = fit_predict_ordinal(z_train, y[train], z_test)
            row["accuracy"] = accuracy_score(y[test], pred)
            row["one_off"] = float(np.mean(np.abs(pred - y[test]) <= 1))
            unseen = sorted(set(np.unique(y[test])) - set(seen))
            if unseen:
                row["note"] = (f"level {', '.join(outcome.levels[int(v)] for v in unseen)} absent from the "
                               f"training part (cannot be predicted in this fold)")
            if not converged:
                row["status"] = "not converged"
        else:
            pred = fit_predict_ols(z_train, y[train], z_test)
            row["r2"] = r2_score(y[test], pred)
    except (ValueError, np.linalg.LinAlgError) as exc:
        row.update(status="failed", note=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        pred = np.full(int(test.sum()), np.nan)
    return row, pred


def cross_validate(features: dict[str, pd.DataFrame], y: pd.Series, folds: pd.Series, outcome: Outcome,
                   samples_per_dim: int = SAMPLES_PER_DIM,
                   progress: Callable[[], None] | None = None) -> CVResult:
    """Score every feature set on one outcome over the shared ``folds``.

    ``features``: method → sid-indexed frame ``[n, D]`` containing every sid of
    ``y``; ``y``: sid-indexed outcome (log units or integer level codes), no
    NaN; ``folds``: :func:`assign_folds` of ``y``. A fold whose model cannot be
    fitted is kept with ``status="failed"`` and the reason in ``note``.
    ``progress`` is called once per fitted fold.
    """
    sids = folds.index
    target = y.loc[sids].to_numpy(dtype=np.float64)
    fold_of = folds.to_numpy()
    rows, preds = [], []
    for method, frame in features.items():
        x = frame.loc[sids].to_numpy(dtype=np.float64)
        for k in range(int(fold_of.max()) + 1):
            test = fold_of == k
            row, pred = _fold(x, target, ~test, outcome, samples_per_dim)
            rows.append({"method": method, "outcome": outcome.name, "kind": outcome.kind, "fold": k, **row})
            preds.append(pd.DataFrame({"method": method, "outcome": outcome.name, "sid": sids[test], "fold": k,
                                       "observed": target[test], "predicted": pred}))
            if progress is not None:
                progress()
    return CVResult(pd.DataFrame(rows, columns=RESULT_COLUMNS), pd.concat(preds, ignore_index=True))


#: Method names of the two reference rows of every evaluation: no features (:func:`chance_folds`) and the
#: densitometry the clinic already measures; the others are the runs' feature sets.
CHANCE = "chance"
DENSITOMETRY = "densitometry"


def chance_folds(y: pd.Series, folds: pd.Series, outcome: Outcome) -> pd.DataFrame:
    """The no-feature baseline on the shared ``folds``: each test fold predicted by its training part's mean
    (continuous: R², about 0 or below) or its majority level (ordinal, the lowest on a tie: accuracy and 1-off).

    Rows of :data:`RESULT_COLUMNS` with method :data:`CHANCE`; a method beats chance only above these.
    """
    target = y.loc[folds.index].to_numpy(dtype=np.float64)
    fold_of = folds.to_numpy()
    rows = []
    for k in range(int(fold_of.max()) + 1):
        test = fold_of == k
        row = {"method": CHANCE, "outcome": outcome.name, "kind": outcome.kind, "fold": k,
               "n_train": int((~test).sum()), "n_test": int(test.sum()), "n_features": 0, "n_dims": 0,
               "r2": np.nan, "accuracy": np.nan, "one_off": np.nan, "status": "ok", "note": ""}
        if outcome.ordinal:
            levels, counts = np.unique(target[~test], return_counts=True)
            guess = levels[counts.argmax()]
            row.update(accuracy=float(np.mean(target[test] == guess)),
                       one_off=float(np.mean(np.abs(target[test] - guess) <= 1)))
        else:
            row["r2"] = r2_score(target[test], np.full(int(test.sum()), target[~test].mean()))
        rows.append(row)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
