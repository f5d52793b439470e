"""The typed study configuration (``configs/vision/studies/<study>-<scale>.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from copd_ifm import config as cfg
from copd_ifm.studies import config as study_config

STUDIES = ("difficulty", "ifm", "correlation")
SCALES = ("demo", "small", "paper")
DATASETS = ("trifeature", "digits-standin", "stl-digits")
STUDY_CONFIG_DIR = cfg.CONFIG_DIR / "vision" / "studies"


@dataclass
class TrifeatureData:
    """How the study's Trifeature is generated when its folder is missing (see :class:`TrifeatureSpec`)."""

    size: int = 32
    per_combination: int = 10
    test_per_combination: int = 2
    seed: int = 0


@dataclass
class DigitsData:
    """How the study's STL-digits / stand-in is generated when its folder is missing (see :class:`DigitsSpec`)."""

    size: int = 32
    n_train: int = 5000                    # stand-in only
    n_test: int = 2000
    seed: int = 0
    raw_root: str = "{data_home}/vision"   # holds stl10_binary/ and MNIST/raw/ (stl-digits)


@dataclass
class StudyConfig:
    study: str = "ifm"
    scale: str = "small"
    dataset: str = "trifeature"
    seeds: int = 3
    # Each sweep maps dotted VisionConfig fields to values; the runs are the union of the
    # sweeps' Cartesian products, times seeds 0..seeds−1 (duplicates run once).
    sweeps: list[dict[str, list[Any]]] = field(default_factory=lambda: [{}])
    beta_temperature: float = 0.5          # difficulty: the τ of the β sweep (for the plot)
    loss_batches: int = 20                 # batches for the final InfoNCE loss
    control: bool = True                   # read out an untrained encoder (same architecture, random init) per seed
    controls: int = 0                      # untrained encoders of seeds 0..n−1 (never fewer than seeds) when control
    keep_checkpoints: bool = False         # keep each finished run's checkpoint.pt (else only its results)
    run: dict[str, Any] = field(default_factory=dict)   # VisionConfig fields shared by every run
    trifeature: TrifeatureData = field(default_factory=TrifeatureData)
    digits: DigitsData = field(default_factory=DigitsData)

    def validate(self) -> None:
        if self.study not in STUDIES:
            raise ValueError(f"study must be one of {', '.join(STUDIES)}, got {self.study!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.seeds < 1 or self.loss_batches < 1:
            raise ValueError(f"seeds and loss_batches must be >= 1, got {self.seeds}, {self.loss_batches}")
        if self.controls < 0:
            raise ValueError(f"controls must be >= 0, got {self.controls}")
        for sweep in self.sweeps:
            for key, values in sweep.items():
                if not values:
                    raise ValueError(f"sweeps: {key} has no values")


def load_study_config(study: str, scale: str, path: str | None = None, overrides: list[str] | None = None,
                      extra: dict[str, Any] | None = None) -> StudyConfig:
    """``configs/vision/studies/<study>-<scale>.yaml`` (or ``path``), then ``extra`` fields, then ``--set``."""
    return study_config.load_study(StudyConfig, study, scale, "vision/studies", path, overrides, extra,
                                   check_scale=path is None)


def data_size(study: StudyConfig) -> int:
    """Side (px) of the study's generated images."""
    return study.trifeature.size if study.dataset == "trifeature" else study.digits.size
