"""What an outcomes study is: its config (``configs/studies/outcomes-<scale>.yaml``) and its runs.

The study pretrains the context-aware model on one cohort (the synthetic one,
generated under ``OUT/cohort``, or a named cohort with a preprocessed store) at
the baseline (ε = 0) and at every ε of its grid, for every seed, plus one
untrained encoder per seed (the initial weights of that seed's runs). Every
run is read out on the same repeated k-fold splits of every outcome.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copd_ifm.cohort.config import CohortConfig, resolve_cohort
from copd_ifm.context.config import PretrainConfig
from copd_ifm.evaluation.outcomes import OUTCOMES, parse_outcomes
from copd_ifm.evaluation.readout import DEFAULT_READOUT, READOUTS
from copd_ifm.studies import config as study_config
from copd_ifm.studies import ct_runs, folder
from copd_ifm.studies.ct_runs import StudyCohort
from copd_ifm.studies.grid import RunPlan, controls, seed_major, sweep_runs

SCALES = ("tiny", "small", "paper")
SYNTHETIC = "synthetic"
#: Study fields that change no run: workers, and the read-out protocols (each run caches one read-out per protocol).
RUNTIME_FIELDS = ("synthetic.workers", "readout", "sensitivity")


@dataclass
class OutcomesStudy:
    """One outcomes study (see the module docstring)."""

    study: str = "outcomes"
    scale: str = "tiny"
    cohort: str = SYNTHETIC                   # "synthetic" or a cohort config name / YAML (its store preprocessed)
    synthetic: StudyCohort = field(default_factory=StudyCohort)
    seeds: int = 2
    epsilons: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.5, 1.0])   # the paper's COPDGene grid
    pretrain: str = "ifm"
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=lambda: list(OUTCOMES))
    features: str = "graph"                   # the feature set read out and tested (the anchor's subject feature)
    folds: int = 5
    repeats: int = 2                          # repeated k-fold: repeat r uses fold seed fold_seed + r
    fold_seed: int = 0
    samples_per_dim: int = 10
    readout: str = DEFAULT_READOUT
    sensitivity: list[str] = field(default_factory=lambda: ["pca-rule"])

    def validate(self) -> None:
        if self.study != "outcomes":
            raise ValueError(f"study must be 'outcomes', got {self.study!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.seeds < 1 or self.repeats < 1 or self.folds < 2 or self.samples_per_dim < 1:
            raise ValueError(f"seeds, repeats and samples_per_dim must be >= 1 and folds >= 2, got {self.seeds}, "
                             f"{self.repeats}, {self.samples_per_dim}, {self.folds}")
        bad = [e for e in self.epsilons if not (math.isfinite(e) and e > 0)]
        if bad or not self.epsilons:
            raise ValueError(f"epsilons: give IFM ε > 0 (the baseline ε = 0 always runs), got {bad or 'none'}")
        if self.features not in ("graph", "patch"):
            raise ValueError(f"features must be graph or patch, got {self.features!r}")
        for name in [self.readout, *self.sensitivity]:
            if name not in READOUTS:
                raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {name!r}")
        parse_outcomes(self.outcomes)


def load_study(scale: str, path: str | None = None, overrides: list[str] | None = None,
               extra: dict[str, Any] | None = None) -> OutcomesStudy:
    """``configs/studies/outcomes-<scale>.yaml`` (or ``path``), then ``extra`` fields, then ``--set``."""
    return study_config.load_study(OutcomesStudy, "outcomes", scale, "studies", path, overrides, extra)


def study_cohort(study: OutcomesStudy, out: Path) -> CohortConfig:
    """The study's cohort: the synthetic one built under ``OUT`` (once), or the named cohort as configured."""
    if study.cohort == SYNTHETIC:
        return ct_runs.prepare_cohort(f"outcomes-{study.scale}", study.synthetic, out)
    return resolve_cohort(study.cohort)   # its store is opened (and a missing one refused) by the runs


def plan_runs(study: OutcomesStudy, tau: float) -> list[RunPlan]:
    """Seed by seed: the untrained encoder, the baseline, then IFM at every ε (all at the config's τ)."""
    sweep = {ct_runs.TAU_FIELD: [tau], ct_runs.EPSILON_FIELD: [0.0, *sorted(set(study.epsilons))]}
    runs = sweep_runs([sweep], study.seeds, order=(ct_runs.TAU_FIELD, ct_runs.EPSILON_FIELD))
    return seed_major(controls(study.seeds) + runs)


def run_config(study: OutcomesStudy, cohort: CohortConfig, plan: RunPlan, device: str = "auto") -> PretrainConfig:
    return ct_runs.run_config(study.pretrain, study.pretrain_overrides, cohort, plan, device)


def base_tau(study: OutcomesStudy, cohort: CohortConfig) -> float:
    """τ of the pretrain config with the study's overrides."""
    return run_config(study, cohort, RunPlan("probe", (("seed", 0),), control=True)).loss.temperature


def check_or_save_study(study: OutcomesStudy, out: Path) -> None:
    """``OUT/study.yaml`` guard: seeds and the ε grid may grow; anything else is another study (the runs'
    cached read-outs hold the splits: folds and repeats are fixed with the folder)."""
    folder.check_or_save_study(study, out, growable=("seeds", "epsilons"), runtime=RUNTIME_FIELDS)
