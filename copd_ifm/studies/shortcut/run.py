"""Running a CT shortcut study: the shared cohort, then each run (pretrain → extract → read-out).

Study folder::

    OUT/study.yaml                   resolved study config (a rerun with other settings is refused)
    OUT/cohort/, OUT/store/          the synthetic cohort and its patch store, built once, shared by every run
    OUT/runs/<run_id>/               pretrain run folder (config.yaml, checkpoint.pt, summary.json),
                                     features.parquet, nodes.npy ([n_subjects, L, F] float16 node embeddings),
                                     readout.csv (per-fold CV read-out), regions.csv (per-landmark R²)
    OUT/runs/<run_id>/result.json    written last: a run with it is finished and skipped on re-runs

An interrupted pretraining resumes from its last epoch checkpoint; ``shard=(K, N)``
runs every N-th run from the K-th, so N processes share a study.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.train import open_store, pretrain, save_untrained
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.errors import UserError
from copd_ifm.evaluation.cv import assign_folds, cross_validate
from copd_ifm.evaluation.evaluate import densitometry_features, load_densitometry
from copd_ifm.evaluation.extract import extract_features
from copd_ifm.evaluation.features import FEATURES_FILE, read_feature_sets
from copd_ifm.evaluation.outcomes import Outcome, outcome_values, parse_outcomes, read_manifest
from copd_ifm.studies.shortcut.plan import (SITE, RunPlan, ShortcutStudy, base_tau, check_or_save_study,
                                            cohort_config, plan_runs, run_config)

log = logging.getLogger(__name__)

NODES_FILE = "nodes.npy"
RESULT_FILE = "result.json"


@dataclass
class Target:
    """One read-out target: ``y`` sid-indexed (no NaN), ``folds`` its shared CV folds."""

    outcome: Outcome
    y: pd.Series
    folds: pd.Series
    is_latent: bool


def prepare_cohort(study: ShortcutStudy, out: Path) -> CohortConfig:
    """Generate and preprocess the study's cohort once (concurrent shards wait on a file lock)."""
    from copd_ifm.cohort.synthetic import generate_cohort
    from copd_ifm.ct.preprocess import preprocess_cohort
    from copd_ifm.ct.store import PatchStore

    cohort = cohort_config(study, out)
    c = study.cohort
    out.mkdir(parents=True, exist_ok=True)
    with files.file_lock(out / ".cohort.lock", "the study's cohort"):
        generate_cohort(cohort.root, n=c.n, seed=c.seed, spacing_mm=c.spacing_mm, workers=c.workers,
                        nuisance=c.nuisance)
        try:
            complete = len(PatchStore(cohort.store_path).index) == c.n
        except UserError:
            complete = False
        if not complete:
            preprocess_cohort(cohort, workers=c.workers)
    return cohort


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
        result.append(Target(outcome, y, assign_folds(y, outcome, study.folds, study.fold_seed), is_latent))
    return result


def densitometry_table(cohort: CohortConfig) -> pd.DataFrame:
    """%LAA-950, Perc15 and lung volume of every subject from the store index (sid-indexed ``[n, 3]``)."""
    return densitometry_features(load_densitometry(cohort), str(cohort.store_path))


def read_out(feature_sets: dict[str, pd.DataFrame], targets: list[Target], samples_per_dim: int,
             readout: str) -> pd.DataFrame:
    """Per-fold cross-validated read-out of every target from every feature set (``cv.RESULT_COLUMNS``)."""
    return pd.concat([cross_validate(feature_sets, t.y, t.folds, t.outcome, samples_per_dim,
                                     readout=readout).results
                      for t in targets], ignore_index=True)


def regional_readout(nodes: np.ndarray, sids: list[str], target: Target, samples_per_dim: int,
                     readout: str) -> pd.DataFrame:
    """Per-landmark CV R² of ``target`` from that landmark's node embedding.

    ``nodes``: ``[n_subjects, L, F]`` in the order of ``sids``. Returns columns
    ``landmark, r2`` (mean over folds) and ``r2_sd`` (sd over folds).
    """
    rows = []
    for landmark in range(nodes.shape[1]):
        frame = pd.DataFrame(nodes[:, landmark, :].astype(np.float64), index=sids)
        r2 = cross_validate({"node": frame}, target.y, target.folds, target.outcome, samples_per_dim,
                            readout=readout).results["r2"]
        rows.append({"landmark": landmark, "r2": r2.mean(), "r2_sd": r2.std()})
    return pd.DataFrame(rows)


def _final_losses(run_dir: Path, cfg: PretrainConfig) -> dict[str, float]:
    """Last epoch's training losses and their chance values ln(K + 1) (K negatives: the queue length)."""
    summary = run_dir / "summary.json"
    history = json.loads(summary.read_text(encoding="utf-8")).get("history", []) if summary.is_file() else []
    last = history[-1] if history else {}
    return {"epochs": cfg.schedule.epochs,
            "patch_loss": last.get("patch_loss", math.nan), "graph_loss": last.get("graph_loss", math.nan),
            "patch_acc": last.get("patch_acc", math.nan), "graph_acc": last.get("graph_acc", math.nan),
            "patch_chance": math.log(cfg.moco.patch_queue + 1), "graph_chance": math.log(cfg.moco.graph_queue + 1)}


def execute_run(study: ShortcutStudy, plan: RunPlan, cohort: CohortConfig, targets: list[Target],
                out: Path, device: str = "auto", regional: bool = True) -> dict[str, Any]:
    """Pretrain (or resume, or build untrained), extract, read out; ``result.json`` last. Returns its content.

    ``regional``: also write the per-landmark read-out ``regions.csv`` (one CV per landmark: the
    costliest read-out, so the study asks for it only where the regional map uses it).
    """
    run_dir = out / "runs" / plan.run_id
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    started = time.time()
    cfg = run_config(study, cohort, plan, device)
    ckpt = Checkpointer(run_dir)
    if plan.method == "untrained":
        if not ckpt.exists():
            save_untrained(cohort, cfg, run_dir)
    elif not (run_dir / "summary.json").is_file():
        pretrain(cohort, cfg, run_dir, resume=ckpt.exists())
    nodes_path = run_dir / NODES_FILE
    if not (run_dir / FEATURES_FILE).is_file() or not nodes_path.is_file():
        extract_features(run_dir, cohort, device=device, workers=cfg.workers, nodes_out=nodes_path)
    sets = {name.rsplit("/", 1)[-1]: frame for name, frame in read_feature_sets(run_dir).items()}
    readout = read_out(sets, targets, study.samples_per_dim, study.readout)
    files.atomic_write_text(run_dir / "readout.csv", readout.to_csv(index=False))
    if regional:
        region_target = next(t for t in targets if t.is_latent and t.outcome.name == study.regions_latent)
        regions = regional_readout(np.load(nodes_path), list(sets["graph"].index), region_target,
                                   study.samples_per_dim, study.readout)
        files.atomic_write_text(run_dir / "regions.csv", regions.to_csv(index=False))
    result = {"run_id": plan.run_id, "method": plan.method, "epsilon": plan.epsilon, "tau": plan.tau,
              "seed": plan.seed, **_final_losses(run_dir, cfg), "wall_s": round(time.time() - started, 1)}
    files.atomic_write_text(result_path, json.dumps(result, indent=2) + "\n")
    return result


def check_report_keeps_runs(out: Path) -> None:
    """Refuse to rewrite a report that would hold fewer runs than ``OUT/results.csv`` already reports.

    The report is rebuilt from the run folders (their read-outs and regional maps), so a study folder
    copied or committed without ``runs/`` cannot be re-reported, only restored.
    """
    saved = out / "results.csv"
    if not saved.is_file():
        return
    ids = pd.read_csv(saved, usecols=["run_id"])["run_id"].dropna().astype(str)
    missing = [i for i in dict.fromkeys(ids) if not (out / "runs" / i / RESULT_FILE).is_file()]
    if missing:
        raise UserError(f"{saved} reports {ids.nunique()} finished runs, but {len(missing)} of their run "
                        f"folders are not here (e.g. {out / 'runs' / missing[0] / RESULT_FILE}); rewriting would drop "
                        f"them: restore {out / 'runs'} or give another --out")


def run_study(study: ShortcutStudy, out: str | Path, shard: tuple[int, int] = (0, 1),
              device: str = "auto", report_only: bool = False) -> Path:
    """Build the cohort, run this shard's unfinished runs (none when ``report_only``), then write the report
    from every finished run; returns the study folder."""
    from copd_ifm.studies.shortcut.report import write_report

    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--shard {k}/{n}: need 0 <= K < N, e.g. 0/2 and 1/2 for two processes")
    out = Path(out)
    if report_only:  # before building the cohort: a copied folder without runs fails at once
        check_report_keeps_runs(out)
    check_or_save_study(study, out)
    cohort = prepare_cohort(study, out)
    plans = plan_runs(study, base_tau(study, cohort))
    for plan in plans:
        run_config(study, cohort, plan, device)      # every run's config is valid before compute starts
    density = densitometry_table(cohort)
    targets = study_targets(study, cohort, density.index.intersection(pd.Index(open_store(cohort).sids)))
    top_eps = max([p.epsilon for p in plans if p.method == "ifm"], default=0.0)
    map_tau = next(p.tau for p in plans if p.method == "baseline")      # the regional map's τ: the sweep's first
    failed = []
    for plan in tqdm([] if report_only else plans[k::n], desc=f"shortcut study {study.scale}", unit="run"):
        if (out / "runs" / plan.run_id / RESULT_FILE).is_file():
            continue
        log.info("run %s", plan.run_id)
        try:
            # the regional map shows the untrained encoder, the baseline and the largest ε (at one τ)
            regional = plan.method == "untrained" or (plan.tau == map_tau and plan.epsilon in (0.0, top_eps))
            execute_run(study, plan, cohort, targets, out, device, regional)
        except UserError:
            raise
        except Exception:  # one crashed run must not stop a long sweep; it is retried on the next invocation
            log.exception("run %s failed", plan.run_id)
            failed.append(plan.run_id)
    write_report(study, out, cohort, plans, targets, density)
    if failed:
        raise UserError(f"{len(failed)} run(s) failed ({', '.join(failed)}); see the log above, then rerun the "
                        "same command to retry them (finished runs are kept)")
    return out
