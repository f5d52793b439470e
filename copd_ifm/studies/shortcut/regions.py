"""The regional read-out: per landmark, how well its node embedding predicts a latent (cached per protocol)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from copd_ifm import files
from copd_ifm.evaluation.cv import cross_validate
from copd_ifm.studies import ct_runs
from copd_ifm.studies.ct_runs import NODES_FILE, Target
from copd_ifm.studies.folder import run_dir
from copd_ifm.studies.grid import RunPlan


def map_runs(plans: list[RunPlan]) -> list[RunPlan]:
    """The runs the regional map shows: every untrained encoder, the baseline and the largest ε at the first τ."""
    trained = [p for p in plans if not p.control]
    if not trained:
        return [p for p in plans if p.control]
    map_tau = ct_runs.tau(trained[0])
    top_eps = max(ct_runs.epsilon(p) for p in trained)
    return [p for p in plans if p.control or (ct_runs.tau(p) == map_tau and ct_runs.epsilon(p) in (0.0, top_eps))]


def regions_path(out: Path, plan: RunPlan, readout: str) -> Path:
    return run_dir(out, plan.run_id) / f"regions-{readout}.csv"


def regional_readout(nodes: np.ndarray, sids: list[str], target: Target, samples_per_dim: int,
                     readout: str) -> pd.DataFrame:
    """Per-landmark CV R² of ``target`` from that landmark's node embedding.

    ``nodes``: ``[n_subjects, L, F]`` in the order of ``sids``. Returns columns
    ``landmark, r2`` (mean over folds) and ``r2_sd`` (sd over folds).
    """
    rows = []
    for landmark in range(nodes.shape[1]):
        frame = pd.DataFrame(nodes[:, landmark, :].astype(np.float64), index=sids)
        r2 = cross_validate({"node": frame}, target.y, target.folds[0], target.outcome, samples_per_dim,
                            readout=readout).results["r2"]
        rows.append({"landmark": landmark, "r2": r2.mean(), "r2_sd": r2.std()})
    return pd.DataFrame(rows)


def run_regions(out: Path, plan: RunPlan, target: Target, samples_per_dim: int, readout: str) -> pd.DataFrame:
    """The run's :func:`regional_readout` of ``target``: cached in ``regions-<protocol>.csv``, computed if missing."""
    path = regions_path(out, plan, readout)
    if path.is_file():
        return pd.read_csv(path)
    folder = run_dir(out, plan.run_id)
    table = regional_readout(np.load(folder / NODES_FILE), list(ct_runs.feature_sets(folder)["graph"].index),
                             target, samples_per_dim, readout)
    files.atomic_write_text(path, table.to_csv(index=False))
    return table
