"""Recipe studies: the IFM paper's Table 1 grid and its robust-feature pair, as studies on the one framework.

* ``table1``: every method of the study (default MoCo-v2 and AdCo) at every ε
  (default the paper's 0, 0.05, 0.1, 0.2) × seeds, each read out by the linear
  protocol of its config (:func:`natural_images.linear.linear_readout`).
* ``robust``: SimCLR at ε = 0 and at the study's IFM ε × seeds, each read out on
  D, D_R and D_NR (:func:`natural_images.robust.robust_features`; Fig. 8).

A run's config is the study's ``config`` (a name in ``configs/vision`` or a YAML)
with ``method`` set; for a method with a sibling ``<dataset>_<method>`` config
beside a ``<dataset>_<first method>`` one (``imagenet100_adco`` beside
``imagenet100_moco``), that sibling, the method's official settings. Then the
study's ``run`` fields and the run's ε and seed. Runs use one process each
(``--shard K/N`` splits them over GPUs or cores); a run spread over several
GPUs is ``pipelines/pretrain_once.sh`` with ``LAUNCH`` (docs/distributed.md).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copd_ifm import config as cfg
from copd_ifm.studies import config as study_config
from copd_ifm.studies.grid import RunPlan, controls, sweep_runs
from natural_images.config import METHODS, VisionConfig
from natural_images.run import load_vision_config

KINDS = ("table1", "robust")
SCALES = ("tiny", "paper")


@dataclass
class RobustSettings:
    fgsm_eps: float = 0.01          # FGSM step in pixel units of [0, 1] images
    max_steps: int = 20


@dataclass
class RecipeStudy:
    """One recipe study (see the module docstring)."""

    study: str = "table1"
    scale: str = "tiny"
    config: str = "cpu_tiny"
    methods: list[str] = field(default_factory=lambda: ["moco", "adco"])
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    seeds: int = 1
    run: dict[str, Any] = field(default_factory=dict)      # dotted VisionConfig fields shared by every run
    robust: RobustSettings = field(default_factory=RobustSettings)

    def validate(self) -> None:
        if self.study not in KINDS:
            raise ValueError(f"study must be one of {', '.join(KINDS)}, got {self.study!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {unknown or 'none'}")
        if self.study == "robust" and self.methods != ["simclr"]:
            raise ValueError(f"a robust study compares SimCLR with IFM-SimCLR: methods must be [simclr], "
                             f"got {self.methods}")
        if 0.0 not in self.epsilons or any(not (math.isfinite(e) and e >= 0) for e in self.epsilons):
            raise ValueError(f"epsilons must be >= 0 and hold the baseline 0, got {self.epsilons}")
        if self.seeds < 1 or self.robust.max_steps < 1 or self.robust.fgsm_eps <= 0:
            raise ValueError("seeds and robust.max_steps must be >= 1 and robust.fgsm_eps > 0")


def load_recipe(kind: str, scale: str, path: str | None = None, overrides: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> RecipeStudy:
    """``configs/vision/studies/<kind>-<scale>.yaml`` (or ``path``), then ``extra`` fields, then ``--set``."""
    return study_config.load_study(RecipeStudy, kind, scale, "vision/studies", path, overrides, extra,
                                   check_scale=path is None)


def plan_runs(study: RecipeStudy) -> list[RunPlan]:
    """Every run, method by method, ε ascending, seeds inner (``moco_eps0.1_seed0`` …), then the untrained
    encoder of every seed (the first method's architecture and initial weights)."""
    grid = sweep_runs([{"method": study.methods, "loss.epsilon": sorted(set(study.epsilons))}], study.seeds,
                      order=("method", "loss.epsilon"))
    return grid + controls(study.seeds)


def method_config(study: RecipeStudy, method: str) -> str:
    """The config a method's runs start from: its ``<dataset>_<method>`` sibling if there is one, else ``config``."""
    first = study.methods[0]
    name = Path(study.config).stem
    if method != first and re.search(f"_{first}$", name):
        sibling = cfg.named_config("vision", study.config).with_name(f"{name[:-len(first)]}{method}.yaml")
        if sibling.is_file():
            return str(sibling)
    return study.config


def run_config(study: RecipeStudy, plan: RunPlan) -> VisionConfig:
    """The study's config for the run's method, the study's ``run`` fields, then the run's method, ε and seed."""
    method = str(plan.get("method", study.methods[0]))
    items = [f"{k}={json.dumps(v)}" for k, v in cfg.flatten(study.run).items()]
    items += [f"method={json.dumps(method)}"] + [f"{k}={json.dumps(v)}" for k, v in plan.values]
    return load_vision_config(method_config(study, method), overrides=items)
