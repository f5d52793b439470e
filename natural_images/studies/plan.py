"""The runs of a vision study (:mod:`copd_ifm.studies.grid`: sweep points × seeds, untrained controls) and each run's config."""
from __future__ import annotations

import json

from copd_ifm import config as cfg
from copd_ifm.errors import UserError
from copd_ifm.studies.grid import RunPlan, controls, sweep_runs
from natural_images.config import VisionConfig
from natural_images.studies.config import StudyConfig, data_size


def plan_runs(study: StudyConfig) -> list[RunPlan]:
    """Every pretraining run of the study, in sweep order, each once."""
    return sweep_runs(study.sweeps, study.seeds)


def plan_controls(study: StudyConfig) -> list[RunPlan]:
    """Untrained-encoder read-outs of seeds 0..max(seeds, controls)−1 (``study.control``), shared run settings.

    Seeds beyond the study's are extra random initialisations: they pin down the untrained floor, whose
    read-out varies more between initialisations than the trained runs' does.
    """
    return controls(max(study.seeds, study.controls)) if study.control else []


def run_config(study: StudyConfig, plan: RunPlan) -> VisionConfig:
    """The VisionConfig of one run: ``study.run``, the dataset (at its generated size), then the sweep point."""
    tree = json.loads(json.dumps(study.run))
    cfg.set_dotted(tree, "data.dataset", study.dataset)
    data = tree["data"]
    for key in ("crop_size", "eval_size"):
        data.setdefault(key, data_size(study))
    for key, value in plan.values:
        cfg.set_dotted(tree, key, value)
    config = cfg.from_dict(VisionConfig, tree, f"study run {plan.run_id}")
    if config.method != "simclr":
        raise UserError(f"study run {plan.run_id}: method must be simclr (the studies' final InfoNCE is SimCLR's)")
    return config
