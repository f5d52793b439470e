"""What a CT shortcut study is: its config (``configs/studies/shortcut-<scale>.yaml``) and its runs.

A study pretrains the context-aware model on one synthetic cohort at the
baseline (ε = 0) and at every IFM ε of its grid, for every τ of its sweep and
every seed, plus one untrained encoder per seed (same architecture and the
same initial weights as that seed's trained runs). Each run is then read out
(:mod:`copd_ifm.studies.shortcut.run`); the report compares them
(:mod:`copd_ifm.studies.shortcut.report`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copd_ifm import config as cfg_io
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.cohort.phenotypes import SITES, check_nuisance
from copd_ifm.cohort.synthetic_subject import LATENT_COLUMNS
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.train import resolve_pretrain_config
from copd_ifm.errors import UserError
from copd_ifm.evaluation.outcomes import OUTCOMES, Outcome, parse_outcomes
from copd_ifm.evaluation.readout import READOUTS

SCALES = ("tiny", "small", "paper")
STUDY_CONFIG_DIR = cfg_io.CONFIG_DIR / "studies"
#: Pretrain config fields the study sweeps (dotted keys as for ``--set``).
EPSILON_FIELD = "loss.epsilon"
TAU_FIELD = "loss.temperature"
#: Latents that can be read out: every ground-truth column of ``latents.csv`` except the id.
READABLE_LATENTS = tuple(c for c in LATENT_COLUMNS if c != "sid")
#: The scanner site is categorical; its levels are ordered by noise level (the site table is monotone),
#: so it is read out like the ordinal outcomes, scored by accuracy.
SITE = Outcome("site", "ordinal", "site", "scanner site (levels ordered by noise sd)",
               tuple(f"site {i}" for i in range(len(SITES))))
# Study fields that may change between invocations on one study folder.
RUNTIME_FIELDS = ("cohort.workers",)


@dataclass
class StudyCohort:
    """The study's synthetic cohort (generated once under ``OUT/cohort``, preprocessed once into ``OUT/store``)."""

    n: int = 24
    seed: int = 0
    spacing_mm: float = 4.0
    patch_size: int = 8               # voxels at spacing_mm
    landmark_step_mm: float = 40.0
    nuisance: float = 1.0             # scale of the scanner differences between sites (0: none)
    workers: int = 2                  # processes for synthesis and preprocessing

    def validate(self) -> None:
        if self.n < 10:
            raise ValueError(f"cohort.n must be >= 10 for a cross-validated read-out, got {self.n}")
        if self.workers < 1:
            raise ValueError(f"cohort.workers must be >= 1, got {self.workers}")
        check_nuisance(self.nuisance)


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
    readout: str = "pca-rule"   # read-out protocol (copd_ifm.evaluation.readout); the committed summaries used it
    regions_latent: str = "emphysema"

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
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.folds < 2 or self.samples_per_dim < 1:
            raise ValueError(f"folds must be >= 2 and samples_per_dim >= 1, got {self.folds}, {self.samples_per_dim}")


@dataclass(frozen=True)
class RunPlan:
    """One run: ``method`` is ``baseline``, ``ifm`` or ``untrained`` (NaN ε and τ for untrained)."""

    run_id: str
    method: str
    epsilon: float
    tau: float
    seed: int


def parse_list(text: str, flag: str) -> list[float]:
    """``"0.1,0.5"`` → ``[0.1, 0.5]``; anything else is a one-line UserError naming ``flag``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give comma-separated numbers such as 0.1,0.5") from None
    if not values:
        raise UserError(f"{flag} is empty: give comma-separated numbers such as 0.1,0.5")
    return values


def load_study(scale: str, path: str | None = None, overrides: list[str] | None = None,
               extra: dict[str, Any] | None = None) -> ShortcutStudy:
    """``configs/studies/shortcut-<scale>.yaml`` (or ``path``), then ``extra`` fields, then ``--set``."""
    study = cfg_io.load(ShortcutStudy, path or STUDY_CONFIG_DIR / f"shortcut-{scale}.yaml", overrides, extra)
    if study.scale != scale:
        raise UserError(f"{path or 'the study config'}: scale is {study.scale!r}, not {scale!r}; "
                        f"pick the matching --scale or fix its scale field")
    return study


def targets(study: ShortcutStudy) -> list[Outcome]:
    """Read-out targets: the study's latents (continuous, site ordinal) then its COPD outcomes."""
    latents = [SITE if name == "site" else Outcome(name, "continuous", name, f"latent {name} (latents.csv)")
               for name in study.latents]
    return latents + (parse_outcomes(study.outcomes) if study.outcomes else [])


def cohort_config(study: ShortcutStudy, out: Path) -> CohortConfig:
    """The study's cohort: generated in ``OUT/cohort``, its patch store in ``OUT/store``."""
    c = study.cohort
    data = {"name": f"shortcut-{study.scale}", "manifest": str(out.absolute() / "cohort" / "manifest.csv"),
            "store": str(out.absolute() / "store"), "spacing_mm": c.spacing_mm, "patch_size": c.patch_size,
            "landmark_step_mm": c.landmark_step_mm,
            "synthetic": {"n": c.n, "seed": c.seed, "nuisance": c.nuisance}}
    return cfg_io.from_dict(CohortConfig, data, f"study {study.scale} cohort")


def _fmt(value: float) -> str:
    return f"{value:g}"


def base_tau(study: ShortcutStudy, cohort: CohortConfig) -> float:
    """τ of the pretrain config with the study's overrides (used when the study sweeps no τ)."""
    return run_config(study, cohort, RunPlan("probe", "baseline", 0.0, math.nan, 0)).loss.temperature


def plan_runs(study: ShortcutStudy, tau: float) -> list[RunPlan]:
    """Every run, seed by seed (so a partial study holds whole seeds): untrained, baseline, then IFM ε."""
    taus = study.taus or [tau]
    eps = sorted({e for e in study.epsilons if e > 0})
    plans: list[RunPlan] = []
    for seed in range(study.seeds):
        plans.append(RunPlan(f"untrained_seed{seed}", "untrained", math.nan, math.nan, seed))
        for t in dict.fromkeys(taus):
            for e in [0.0, *eps]:
                plans.append(RunPlan(f"tau{_fmt(t)}_eps{_fmt(e)}_seed{seed}", "ifm" if e > 0 else "baseline",
                                     e, t, seed))
    return plans


def run_config(study: ShortcutStudy, cohort: CohortConfig, plan: RunPlan, device: str = "auto") -> PretrainConfig:
    """The pretrain config of one run: the study's YAML and overrides, then the run's ε, τ and seed."""
    # flattened: a nested group given with --set replaces only the fields it names
    items = [f"{k}={json.dumps(v)}" for k, v in cfg_io.flatten(study.pretrain_overrides).items()]
    items += [f"seed={plan.seed}", f"device={device}", f"name={plan.run_id}"]
    items.append(f"{EPSILON_FIELD}={plan.epsilon if math.isfinite(plan.epsilon) else 0.0}")
    if math.isfinite(plan.tau):
        items.append(f"{TAU_FIELD}={plan.tau}")
    return resolve_pretrain_config(study.pretrain, cohort, overrides=items)


def check_or_save_study(study: ShortcutStudy, out: Path) -> None:
    """Write ``OUT/study.yaml``; refuse to mix runs of different settings in one folder.

    Seeds and the ε / τ grids may grow (new runs join); anything else is a different study.
    """
    path = out / "study.yaml"
    if path.is_file():
        saved = cfg_io.flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        now = cfg_io.flatten(cfg_io.to_dict(study))
        growable = ("seeds", "epsilons", "taus")
        changed = sorted(k for k in saved.keys() | now.keys()
                         if not k.startswith(growable) and k not in RUNTIME_FIELDS and saved.get(k) != now.get(k))
        if changed:
            raise UserError(f"{path}: this folder holds a study with {changed[0]}={saved.get(changed[0])!r}, "
                            f"not {now.get(changed[0])!r}; use another --out (or delete the folder to start over)")
    out.mkdir(parents=True, exist_ok=True)
    cfg_io.save_resolved(study, path)
