"""Running a recipe study (:mod:`natural_images.studies.recipes`): each run pretrained, read out, then the report.

Study folder: ``OUT/study.yaml``, ``OUT/runs/<run_id>/`` (the vision run folder, ``linear.json`` or
``robust/``, ``result.json`` last), ``OUT/results.csv``, ``OUT/summary.md``, ``OUT/<study>.png``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from copd_ifm.studies.folder import check_or_save_study, read_result, run_dir, write_result
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.runner import check_shard, raise_if_failed, run_shard
from natural_images.datasets import build_dataset
from natural_images.linear import linear_readout
from natural_images.robust import robust_features
from natural_images.studies.recipes import RecipeStudy, plan_runs, run_config
from natural_images.studies.recipes_report import write_report
from natural_images.studies.run import majority_shares, train_or_init

#: Study fields that change no run (where data lives, loader processes).
RUNTIME_FIELDS = ("run.data.root", "run.data.workers")


def _readout(study: RecipeStudy, folder: Path, device: str) -> dict[str, Any]:
    if study.study == "table1":
        result = linear_readout(folder, device=device)
        return {"readout": result["readout"], **{f"top1_{k}": round(v, 4) for k, v in result["top1"].items()}}
    r = robust_features(folder, study.robust.fgsm_eps, study.robust.max_steps, folder / "robust", device=device)
    return {k: r[k] for k in ("D", "D_R", "D_NR", "flipped", "not_flipped", "train_size")}


def execute_run(study: RecipeStudy, plan: RunPlan, out: Path, device: str = "auto") -> dict[str, Any]:
    """Pretrain (or resume) one run, read it out; ``result.json`` last. A finished run only returns its row."""
    done = read_result(out, plan.run_id)
    if done is not None:
        return done
    folder = run_dir(out, plan.run_id)
    config = run_config(study, plan)
    started = time.time()
    loss = train_or_init(config, plan, folder, device)
    chance = {f"chance_{k}": round(v, 4) for k, v in majority_shares(build_dataset(config.data, "test")).items()}
    row = {"run_id": plan.run_id, "method": "untrained" if plan.control else config.method,
           "epsilon": config.loss.epsilon, "seed": config.seed, "dataset": config.data.dataset,
           "arch": config.model.arch, "epochs": 0 if plan.control else config.epochs, "train_loss": loss,
           **_readout(study, folder, device), **chance, "wall_s": round(time.time() - started, 1)}
    return write_result(folder, row)


def run_recipe(study: RecipeStudy, out: str | Path, shard: tuple[int, int] = (0, 1), device: str = "auto",
               report_only: bool = False) -> Path:
    """Run this shard's unfinished runs (none when ``report_only``), then write the report; returns ``out``."""
    check_shard(shard)
    out = Path(out)
    plans = plan_runs(study)
    for plan in plans:
        run_config(study, plan)   # every run's config is valid before compute starts
    check_or_save_study(study, out, growable=("seeds", "epsilons", "methods"), runtime=RUNTIME_FIELDS)
    failed = [] if report_only else run_shard(plans, out, lambda p: execute_run(study, p, out, device), shard,
                                              f"{study.study} study")
    write_report(study, out, plans)
    raise_if_failed(failed)
    return out
