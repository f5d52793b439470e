"""Cross-validated linear read-out: shared folds and per-fold scores of every feature set.

* Folds: seeded ``KFold`` (continuous outcomes) or ``StratifiedKFold`` on the
  level (ordinal outcomes), both shuffled, computed once per outcome over the
  subjects sorted by ``sid`` and reused for every feature set; repeat ``r`` of
  a repeated k-fold uses seed ``seed + r`` (:func:`repeated_folds`).
* Models, fitted on the training part of each fold only: the read-out
  protocol of :mod:`copd_ifm.evaluation.readout` (``nested`` by default:
  standardised ridge / L2 ordered logit with the penalty chosen by an inner CV
  when the features outnumber a tenth of the training subjects).
* Continuous: R² on the held-out fold, ``1 − SS_res/SS_tot`` with ``SS_tot``
  around the *test fold's* mean (``sklearn.metrics.r2_score``), so predicting
  the training mean scores ≈ 0 or below and R² can be negative.
* Ordinal: the predicted level is the one of highest predicted probability;
  accuracy and 1-off accuracy (share of predictions within one level of the
  truth). The model can only predict levels seen in its training part; a level
  present only in the test part is therefore always missed there, for every
  method alike, and the fold row says so in ``note``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from copd_ifm.errors import UserError
from copd_ifm.evaluation.outcomes import Outcome
from copd_ifm.evaluation.readout import DEFAULT_READOUT, SAMPLES_PER_DIM, check_readout, fit_predict

#: Columns of the per-fold results table.
RESULT_COLUMNS = ["method", "outcome", "kind", "fold", "n_train", "n_test", "n_features", "n_dims",
                  "model", "penalty", "r2", "accuracy", "one_off", "status", "note"]


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


def repeated_folds(y: pd.Series, outcome: Outcome, n_folds: int, seed: int, repeats: int) -> list[pd.Series]:
    """Repeated k-fold: :func:`assign_folds` with seed ``seed + r`` for repeat ``r = 0 … repeats−1``
    (repeat 0 is the plain k-fold of ``seed``)."""
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    return [assign_folds(y, outcome, n_folds, seed + r) for r in range(repeats)]


@dataclass
class CVResult:
    """Per-fold metrics (columns :data:`RESULT_COLUMNS`) and out-of-fold predictions
    (columns method, outcome, sid, fold, observed, predicted)."""

    results: pd.DataFrame
    predictions: pd.DataFrame


def _fold(x: np.ndarray, y: np.ndarray, train: np.ndarray, outcome: Outcome, samples_per_dim: int,
          readout: str) -> tuple[dict[str, object], np.ndarray]:
    """Fit on ``train`` rows, score on the rest → (metric fields, test predictions)."""
    test = ~train
    row: dict[str, object] = {"n_train": int(train.sum()), "n_test": int(test.sum()), "n_features": x.shape[1],
                              "n_dims": np.nan, "model": "", "penalty": np.nan, "r2": np.nan, "accuracy": np.nan,
                              "one_off": np.nan, "status": "ok", "note": ""}
    pred = np.full(int(test.sum()), np.nan)
    try:
        seen = np.unique(y[train])
        if outcome.ordinal and len(seen) < 2:
            raise ValueError(f"only level {seen[0]:g} in the training part")
        fit = fit_predict(readout, x[train], y[train], x[test], outcome.ordinal, samples_per_dim)
        pred = fit.predicted
        row.update(n_dims=fit.n_dims, model=fit.model, penalty=fit.penalty)
        if outcome.ordinal:
            row["accuracy"] = accuracy_score(y[test], pred)
            row["one_off"] = float(np.mean(np.abs(pred - y[test]) <= 1))
            unseen = sorted(set(np.unique(y[test])) - set(seen))
            if unseen:
                row["note"] = (f"level {', '.join(outcome.levels[int(v)] for v in unseen)} absent from the "
                               f"training part (cannot be predicted in this fold)")
            if not fit.converged:
                row["status"] = "not converged"
        else:
            row["r2"] = r2_score(y[test], pred)
    except (ValueError, np.linalg.LinAlgError) as exc:
        row.update(status="failed", note=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        pred = np.full(int(test.sum()), np.nan)
    return row, pred


def cross_validate(features: dict[str, pd.DataFrame], y: pd.Series, folds: pd.Series, outcome: Outcome,
                   samples_per_dim: int = SAMPLES_PER_DIM, progress: Callable[[], None] | None = None,
                   readout: str = DEFAULT_READOUT) -> CVResult:
    """Score every feature set on one outcome over the shared ``folds`` with protocol ``readout``.

    ``features``: method → sid-indexed frame ``[n, D]`` containing every sid of
    ``y``; ``y``: sid-indexed outcome (log units or integer level codes), no
    NaN; ``folds``: :func:`assign_folds` of ``y``. A fold whose model cannot be
    fitted is kept with ``status="failed"`` and the reason in ``note``.
    ``progress`` is called once per fitted fold.
    """
    check_readout(readout)
    sids = folds.index
    target = y.loc[sids].to_numpy(dtype=np.float64)
    fold_of = folds.to_numpy()
    rows, preds = [], []
    # one BLAS thread: these matrices are small, and threaded BLAS on them ran up to 7x slower
    # (benchmarks/RESULTS.md, "Read-out on one BLAS thread")
    with threadpool_limits(limits=1, user_api="blas"):
        for method, frame in features.items():
            x = frame.loc[sids].to_numpy(dtype=np.float64)
            for k in range(int(fold_of.max()) + 1):
                test = fold_of == k
                row, pred = _fold(x, target, ~test, outcome, samples_per_dim, readout)
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
               "model": "majority level" if outcome.ordinal else "training mean", "penalty": np.nan,
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
