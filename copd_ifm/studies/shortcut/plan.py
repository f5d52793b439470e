"""What a CT shortcut study is: its config (``configs/studies/shortcut-<scale>.yaml``) and its runs.

A study pretrains the context-aware model on one synthetic cohort at the
baseline (ε = 0) and at every IFM ε of its grid, for every τ of its sweep and
every seed, plus one untrained encoder per seed (same architecture and the
same initial weights as that seed's trained runs). Each run is then read out
(:mod:`copd_ifm.studies.shortcut.run`); the report compares them
(:mod:`copd_ifm.studies.shortcut.report`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copd_ifm.cohort.config import CohortConfig
from copd_ifm.cohort.phenotypes import SITES
from copd_ifm.cohort.synthetic_subject import LATENT_COLUMNS
from copd_ifm.context.config import PretrainConfig
from copd_ifm.evaluation.outcomes import OUTCOMES, Outcome, parse_outcomes
from copd_ifm.evaluation.readout import DEFAULT_READOUT, READOUTS
from copd_ifm.studies import config as study_config
from copd_ifm.studies import ct_runs, folder
from copd_ifm.studies.ct_runs import StudyCohort
from copd_ifm.studies.grid import RunPlan, controls, seed_major, sweep_runs

SCALES = ("tiny", "small", "paper")
#: Latents that can be read out: every ground-truth column of ``latents.csv`` except the id.
READABLE_LATENTS = tuple(c for c in LATENT_COLUMNS if c != "sid")
#: The scanner site is categorical; its levels are ordered by noise level (the site table is monotone),
#: so it is read out like the ordinal outcomes, scored by accuracy.
SITE = Outcome("site", "ordinal", "site", "scanner site (levels ordered by noise sd)",
               tuple(f"site {i}" for i in range(len(SITES))))
# Study fields that may change between invocations on one study folder (they change no run).
RUNTIME_FIELDS = ("cohort.workers", "readout", "sensitivity", "regions_readout")


@dataclass
class ShortcutStudy:
    """One CT shortcut study (see the module docstring)."""

    study: str = "shortcut"
    scale: str = "tiny"
    cohort: StudyCohort = field(default_factory=StudyCohort)
    seeds: int = 2
    epsilons: list[float] = field(default_factory=lambda: [0.1])     # IFM grid; ε = 0 (baseline) always runs
    taus: list[float] = field(default_factory=list)                  # τ sweep; empty: the pretrain config's τ
    pretrain: str = "ifm"                                            # pretrain YAML (configs/pretrain)
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys, as for --set
    latents: list[str] = field(default_factory=lambda: ["emphysema", "cle_share", "airway", "site", "body_size"])
    outcomes: list[str] = field(default_factory=lambda: list(OUTCOMES))
    folds: int = 5
    fold_seed: int = 0
    samples_per_dim: int = 10
    readout: str = DEFAULT_READOUT     # declared read-out protocol (copd_ifm.evaluation.readout)
    sensitivity: list[str] = field(default_factory=lambda: ["pca-rule"])   # protocols shown as sensitivity only
    regions_latent: str = "emphysema"
    # the regional map's protocol: one read-out per landmark (hundreds per run), where the nested inner CV
    # costs ~20x the PCA rule (measured: ~500 vs ~25 CPU s per run at 573 landmarks); chosen for cost, not results
    regions_readout: str = "pca-rule"

    def validate(self) -> None:
        if self.study != "shortcut":
            raise ValueError(f"study must be 'shortcut', got {self.study!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        bad_eps = [e for e in self.epsilons if not (math.isfinite(e) and e >= 0)]
        if bad_eps:
            raise ValueError(f"epsilons: ε must be >= 0, got {bad_eps[0]}")
        bad_tau = [t for t in self.taus if not (math.isfinite(t) and t > 0)]
        if bad_tau:
            raise ValueError(f"taus: τ must be > 0, got {bad_tau[0]}")
        for name in [*self.latents, self.regions_latent]:
            if name not in READABLE_LATENTS:
                raise ValueError(f"unknown latent {name!r} (latents.csv has {', '.join(READABLE_LATENTS)})")
        if self.regions_latent == "site":
            raise ValueError("regions_latent must be a continuous latent, not site")
        for name in [self.readout, *self.sensitivity, self.regions_readout]:
            if name not in READOUTS:
                raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {name!r}")
        if self.folds < 2 or self.samples_per_dim < 1:
            raise ValueError(f"folds must be >= 2 and samples_per_dim >= 1, got {self.folds}, {self.samples_per_dim}")


def load_study(scale: str, path: str | None = None, overrides: list[str] | None = None,
               extra: dict[str, Any] | None = None) -> ShortcutStudy:
    """``configs/studies/shortcut-<scale>.yaml`` (or ``path``), then ``extra`` fields, then ``--set``."""
    return study_config.load_study(ShortcutStudy, "shortcut", scale, "studies", path, overrides, extra)


def targets(study: ShortcutStudy) -> list[Outcome]:
    """Read-out targets: the study's latents (continuous, site ordinal) then its COPD outcomes."""
    latents = [SITE if name == "site" else Outcome(name, "continuous", name, f"latent {name} (latents.csv)")
               for name in study.latents]
    return latents + (parse_outcomes(study.outcomes) if study.outcomes else [])


def cohort_config(study: ShortcutStudy, out: Path) -> CohortConfig:
    """The study's cohort: generated in ``OUT/cohort``, its patch store in ``OUT/store``."""
    return ct_runs.cohort_config(f"shortcut-{study.scale}", study.cohort, out)


def base_tau(study: ShortcutStudy, cohort: CohortConfig) -> float:
    """τ of the pretrain config with the study's overrides (used when the study sweeps no τ)."""
    return ct_runs.run_config(study.pretrain, study.pretrain_overrides, cohort,
                              RunPlan("probe", (("seed", 0),), control=True)).loss.temperature


def plan_runs(study: ShortcutStudy, tau: float) -> list[RunPlan]:
    """Every run, seed by seed (so a partial study holds whole seeds): untrained, baseline, then IFM ε."""
    eps = [0.0, *sorted({e for e in study.epsilons if e > 0})]
    sweep = {ct_runs.TAU_FIELD: list(dict.fromkeys(study.taus or [tau])), ct_runs.EPSILON_FIELD: eps}
    runs = sweep_runs([sweep], study.seeds, order=(ct_runs.TAU_FIELD, ct_runs.EPSILON_FIELD))
    return seed_major(controls(study.seeds) + runs)


def run_config(study: ShortcutStudy, cohort: CohortConfig, plan: RunPlan, device: str = "auto") -> PretrainConfig:
    """The pretrain config of one run: the study's YAML and overrides, then the run's ε, τ and seed."""
    return ct_runs.run_config(study.pretrain, study.pretrain_overrides, cohort, plan, device)


def check_or_save_study(study: ShortcutStudy, out: Path) -> None:
    """``OUT/study.yaml`` guard (:func:`copd_ifm.studies.folder.check_or_save_study`): seeds and the ε / τ
    grids may grow; the read-out protocols only change the report (each run caches one read-out per protocol)."""
    folder.check_or_save_study(study, out, growable=("seeds", "epsilons", "taus"), runtime=RUNTIME_FIELDS)
