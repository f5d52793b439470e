"""Running an outcomes study: the cohort, then each run (pretrain → extract → read-out on the shared folds).

Study folder: ``OUT/study.yaml``, ``OUT/cohort/`` and ``OUT/store/`` (synthetic
cohort only), ``OUT/runs/<run_id>/`` (:mod:`copd_ifm.studies.ct_runs`: the
pretrain run, ``features.parquet``, ``readout-<protocol>.csv``) with
``result.json`` written last. ``shard=(K, N)`` runs every N-th run from the
K-th; finished runs are skipped and an interrupted pretraining resumes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.train import open_store
from copd_ifm.errors import UserError
from copd_ifm.evaluation.cv import repeated_folds
from copd_ifm.evaluation.evaluate import too_few
from copd_ifm.evaluation.outcomes import outcome_values, parse_outcomes, read_manifest
from copd_ifm.studies import ct_runs
from copd_ifm.studies.ct_runs import Target
from copd_ifm.studies.folder import check_report_keeps_runs
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.outcomes.plan import (OutcomesStudy, base_tau, check_or_save_study, plan_runs, run_config,
                                            study_cohort)
from copd_ifm.studies.outcomes.report import write_report
from copd_ifm.studies.runner import check_shard, raise_if_failed, run_shard

log = logging.getLogger(__name__)


def study_targets(study: OutcomesStudy, cohort: CohortConfig, sids: pd.Index) -> tuple[list[Target], list[str]]:
    """Every outcome over ``sids`` with its repeated folds (shared by every run), and the skipped ones' reasons."""
    manifest = read_manifest(cohort.manifest_path, cohort.name)
    targets, skipped = [], []
    for outcome in parse_outcomes(study.outcomes):
        y = outcome_values(outcome, manifest, cohort.outcomes, str(cohort.manifest_path)).reindex(sids).dropna()
        reason = too_few(y, outcome, study.folds, study.fold_seed)
        if reason:
            skipped.append(f"{outcome.name} skipped: {reason}")
            continue
        targets.append(Target(outcome, y, repeated_folds(y, outcome, study.folds, study.fold_seed, study.repeats)))
    if not targets:
        raise UserError(f"cohort {cohort.name}: every outcome was skipped ({'; '.join(skipped)}); "
                        f"add outcome columns to {cohort.manifest_path} or lower folds")
    return targets, skipped


def execute_run(study: OutcomesStudy, plan: RunPlan, cohort: CohortConfig, targets: list[Target], out: Path,
                device: str = "auto") -> dict[str, Any]:
    """Pretrain (or resume, or build untrained), extract, read out; ``result.json`` last. Returns its content."""
    def read() -> None:
        # only the tested feature set: the nested ordinal read-out is the costliest step after pretraining
        ct_runs.run_readout(out, plan, targets, study.samples_per_dim, study.readout, [study.features])

    return ct_runs.execute(out, plan, run_config(study, cohort, plan, device), cohort, device, read)


def run_study(study: OutcomesStudy, out: str | Path, shard: tuple[int, int] = (0, 1), device: str = "auto",
              report_only: bool = False) -> Path:
    """Build (or open) the cohort, run this shard's unfinished runs (none when ``report_only``), then write
    the report from every finished run; returns the study folder."""
    check_shard(shard)
    out = Path(out)
    if report_only:  # before building the cohort: a copied folder without its runs fails at once
        check_report_keeps_runs(out)
    check_or_save_study(study, out)
    cohort = study_cohort(study, out)
    plans = plan_runs(study, base_tau(study, cohort))
    for plan in plans:
        run_config(study, cohort, plan, device)      # every run's config is valid before compute starts
    density = ct_runs.densitometry_table(cohort)
    targets, skipped = study_targets(study, cohort, density.index.intersection(pd.Index(open_store(cohort).sids)))
    for line in skipped:
        log.warning("%s", line)
    failed = [] if report_only else run_shard(
        plans, out, lambda plan: execute_run(study, plan, cohort, targets, out, device), shard,
        f"outcomes study {study.scale}")
    write_report(study, out, cohort, plans, targets, density, skipped)
    raise_if_failed(failed)
    return out
