"""The runs of a study: sweep points × seeds, untrained-encoder controls (at least one per seed), each run's config."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from copd_ifm import config as cfg
from copd_ifm.errors import UserError
from natural_images.config import VisionConfig
from natural_images.studies.config import StudyConfig, data_size

# Short names of swept VisionConfig fields in run ids and result columns.
SHORT = {"loss.temperature": "tau", "loss.hcl_beta": "beta", "loss.tau_plus": "tauplus", "loss.epsilon": "eps",
         "loss.alpha": "alpha"}
CONTROL_PREFIX = "untrained"


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    values: tuple[tuple[str, Any], ...]    # (dotted field, value) of the sweep point, seed included
    control: bool = False                  # an untrained encoder: no pretraining, read out only


def fmt(value: Any) -> str:
    """``0.1`` → ``"0.1"``, ``1.0`` → ``"1"``; other values as ``str``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_runs(study: StudyConfig) -> list[RunPlan]:
    """Every pretraining run of the study, in sweep order, each once."""
    plans: dict[str, RunPlan] = {}
    for sweep in study.sweeps:
        keys = sorted(sweep)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            for seed in range(study.seeds):
                values = tuple(zip(keys, combo)) + (("seed", seed),)
                run_id = "_".join(f"{SHORT.get(k, k.replace('.', '-'))}{fmt(v)}" for k, v in values)
                plans.setdefault(run_id, RunPlan(run_id, values))
    return list(plans.values())


def plan_controls(study: StudyConfig) -> list[RunPlan]:
    """Untrained-encoder read-outs of seeds 0..max(seeds, controls)−1 (``study.control``), shared run settings.

    Seeds beyond the study's are extra random initialisations: they pin down the untrained floor, whose
    read-out varies more between initialisations than the trained runs' does.
    """
    if not study.control:
        return []
    return [RunPlan(f"{CONTROL_PREFIX}_seed{seed}", (("seed", seed),), control=True)
            for seed in range(max(study.seeds, study.controls))]


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def run_config(study: StudyConfig, plan: RunPlan) -> VisionConfig:
    """The VisionConfig of one run: ``study.run``, the dataset (at its generated size), then the sweep point."""
    tree = json.loads(json.dumps(study.run))
    _set(tree, "data.dataset", study.dataset)
    data = tree["data"]
    for key in ("crop_size", "eval_size"):
        data.setdefault(key, data_size(study))
    for key, value in plan.values:
        _set(tree, key, value)
    config = cfg.from_dict(VisionConfig, tree, f"study run {plan.run_id}")
    if config.method != "simclr":
        raise UserError(f"study run {plan.run_id}: method must be simclr (the studies' final InfoNCE is SimCLR's)")
    return config
