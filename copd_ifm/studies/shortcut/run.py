"""Running a CT shortcut study: the shared cohort, then each run (pretrain → extract → read-out).

Study folder (:mod:`copd_ifm.studies.folder`, run folders as in :mod:`copd_ifm.studies.ct_runs`)::

    OUT/study.yaml                   resolved study config (a rerun with other settings is refused)
    OUT/cohort/, OUT/store/          the synthetic cohort and its patch store, built once, shared by every run
    OUT/runs/<run_id>/               pretrain run folder, features.parquet, nodes.npy,
                                     readout-<protocol>.csv (per-fold CV read-out per protocol),
                                     regions-<protocol>.csv (per-landmark R², regional-map runs only)
    OUT/runs/<run_id>/result.json    written last: a run with it is finished and skipped on re-runs

An interrupted pretraining resumes from its last epoch checkpoint; ``shard=(K, N)``
runs every N-th run from the K-th, so N processes share a study.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.train import open_store
from copd_ifm.evaluation.cv import assign_folds
from copd_ifm.evaluation.outcomes import Outcome, outcome_values, parse_outcomes, read_manifest
from copd_ifm.studies import ct_runs
from copd_ifm.studies.ct_runs import Target
from copd_ifm.studies.folder import check_report_keeps_runs
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.runner import check_shard, raise_if_failed, run_shard
from copd_ifm.studies.shortcut.plan import (SITE, ShortcutStudy, base_tau, check_or_save_study, cohort_config,
                                            plan_runs, run_config)
from copd_ifm.studies.shortcut.regions import map_runs, run_regions
from copd_ifm.studies.shortcut.report import write_report


def study_targets(study: ShortcutStudy, cohort: CohortConfig, sids: pd.Index) -> list[Target]:
    """Every latent and outcome of the study over the subjects ``sids``, with folds shared by every method."""
    latents = pd.read_csv(cohort.root / "latents.csv", dtype={"sid": str}).set_index("sid")
    manifest = read_manifest(cohort.manifest_path, cohort.name)
    pairs: list[tuple[Outcome, pd.Series, bool]] = []
    for name in dict.fromkeys([*study.latents, study.regions_latent]):   # the regional latent is read out too
        outcome = SITE if name == "site" else Outcome(name, "continuous", name, f"latent {name} (latents.csv)")
        pairs.append((outcome, latents[name].astype(float), True))
    for outcome in parse_outcomes(study.outcomes) if study.outcomes else []:
        pairs.append((outcome, outcome_values(outcome, manifest, cohort.outcomes, str(cohort.manifest_path)), False))
    result = []
    for outcome, values, is_latent in pairs:
        y = values.reindex(sids).dropna()
        result.append(Target(outcome, y, [assign_folds(y, outcome, study.folds, study.fold_seed)], is_latent))
    return result


def execute_run(study: ShortcutStudy, plan: RunPlan, cohort: CohortConfig, targets: list[Target],
                out: Path, device: str = "auto", regional: bool = True) -> dict[str, Any]:
    """Pretrain (or resume, or build untrained), extract, read out; ``result.json`` last. Returns its content.

    ``regional``: also write the per-landmark read-out ``regions-<regions_readout>.csv`` (one CV per
    landmark: the costliest read-out, so the study asks for it only where the regional map uses it).
    """
    def read() -> None:
        ct_runs.run_readout(out, plan, targets, study.samples_per_dim, study.readout)
        if regional:
            region_target = next(t for t in targets if t.is_latent and t.outcome.name == study.regions_latent)
            run_regions(out, plan, region_target, study.samples_per_dim, study.regions_readout)

    return ct_runs.execute(out, plan, run_config(study, cohort, plan, device), cohort, device, read, nodes=True)


def run_study(study: ShortcutStudy, out: str | Path, shard: tuple[int, int] = (0, 1),
              device: str = "auto", report_only: bool = False) -> Path:
    """Build the cohort, run this shard's unfinished runs (none when ``report_only``), then write the report
    from every finished run; returns the study folder."""
    check_shard(shard)
    out = Path(out)
    if report_only:  # before building the cohort: a copied folder without runs fails at once
        check_report_keeps_runs(out)
    check_or_save_study(study, out)
    cohort = ct_runs.prepare_cohort(cohort_config(study, out).name, study.cohort, out)
    plans = plan_runs(study, base_tau(study, cohort))
    for plan in plans:
        run_config(study, cohort, plan, device)      # every run's config is valid before compute starts
    density = ct_runs.densitometry_table(cohort)
    targets = study_targets(study, cohort, density.index.intersection(pd.Index(open_store(cohort).sids)))
    regional = {p.run_id for p in map_runs(plans)}

    def execute(plan: RunPlan) -> object:
        return execute_run(study, plan, cohort, targets, out, device, plan.run_id in regional)

    failed = [] if report_only else run_shard(plans, out, execute, shard, f"shortcut study {study.scale}")
    write_report(study, out, cohort, plans, targets, density)
    raise_if_failed(failed)
    return out
