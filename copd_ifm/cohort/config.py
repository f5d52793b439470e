"""What a cohort is: manifest, geometry, patch settings, outcome mapping.

A cohort is named by a YAML file in ``configs/cohorts/`` (``demo``,
``copdgene``), by any YAML path, or by a manifest CSV path (then the defaults
below apply, with the spacing of ``copdgene``; a manifest written by
``copd-ifm synth`` takes the demo's settings at its own spacing, see
:func:`synthetic_defaults`). Relative paths inside a cohort
YAML are resolved against the YAML's folder; ``{data_home}`` expands to
:func:`copd_ifm.config.data_home`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

#: COPDGene's column names for the canonical outcomes (see DESIGN.md §4).
COPDGENE_OUTCOME_COLUMNS: dict[str, str] = {
    "FEV1pp": "FEV1pp_utah",
    "FEV1FVC": "FEV1_FVC_utah",
    "GOLD": "finalGold",
    "CLE": "Emph_Severity",
    "Paraseptal": "Emph_Paraseptal",
    "mMRC": "MMRCDyspneaScor",
}


@dataclass
class SyntheticSpec:
    """Parameters of a generated cohort (the embedded ``demo``)."""

    n: int = 48
    seed: int = 0
    nuisance: float = 1.0        # scale of the scanner differences between sites (0: none, 1: default table)

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.nuisance < 0:
            raise ValueError(f"nuisance must be >= 0, got {self.nuisance}")


@dataclass
class RegistrationConfig:
    """Subject lung mask → atlas lung mask registration (SimpleITK)."""

    transform: str = "affine"            # "affine" (the anchor) or "rigid"
    bspline: bool = False                # optional B-spline refinement after the affine
    bspline_mesh_mm: float = 60.0        # control-point spacing of the refinement
    downsample_mm: float = 6.0           # masks are registered at this spacing (4 mm: same accuracy, 2x slower)
    iterations: int = 200
    shrink_factors: list[int] = field(default_factory=lambda: [4, 2, 1])
    smoothing_sigmas_mm: list[float] = field(default_factory=lambda: [2.0, 1.0, 0.0])
    max_scale_change: float = 2.0        # |log det| above log(1+x) counts as diverged (lung volumes span ~3x)

    def validate(self) -> None:
        if self.transform not in {"affine", "rigid"}:
            raise ValueError(f"registration.transform must be 'affine' or 'rigid', got {self.transform!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ValueError("registration.shrink_factors and smoothing_sigmas_mm need the same length")


@dataclass
class DicomConfig:
    """How a DICOM folder becomes one CT volume (see :mod:`copd_ifm.ct.dicom`)."""

    slice_step_tolerance: float = 0.05   # a slice step may differ from the median step by this fraction
    uneven: str = "refuse"               # "refuse" uneven slice steps, or "resample" onto a uniform grid
    resample_max_step_mm: float = 5.0    # "resample": larger steps are still refused as missing slices
    gantry_tilt: str = "refuse"          # "refuse" a sheared (tilted) series, or "correct" it in plane
    min_slices: int = 10
    kernel_preference: list[str] = field(default_factory=list)   # fnmatch patterns, best first, e.g. ["B3*f"]

    def validate(self) -> None:
        if self.uneven not in {"refuse", "resample"}:
            raise ValueError(f"dicom.uneven must be 'refuse' or 'resample', got {self.uneven!r}")
        if self.gantry_tilt not in {"refuse", "correct"}:
            raise ValueError(f"dicom.gantry_tilt must be 'refuse' or 'correct', got {self.gantry_tilt!r}")
        if not 0 < self.slice_step_tolerance < 0.5:
            raise ValueError(f"dicom.slice_step_tolerance must be in (0, 0.5), got {self.slice_step_tolerance}")
        if self.min_slices < 2:
            raise ValueError(f"dicom.min_slices must be >= 2, got {self.min_slices}")


@dataclass
class FovConfig:
    """Field-of-view gates: lungs cut by the scan range or the reconstruction circle fail the subject."""

    max_edge_fraction: float = 0.1       # lung on a face of the image / the largest lung section parallel to it
    max_landmarks_outside: float = 0.02  # share of patches with at least half their voxels outside the image

    def validate(self) -> None:
        if not 0 < self.max_edge_fraction <= 1 or not 0 <= self.max_landmarks_outside <= 1:
            raise ValueError("fov.max_edge_fraction must be in (0, 1], fov.max_landmarks_outside in [0, 1]")


@dataclass
class CohortConfig:
    """A cohort: where its manifest is and how to turn it into a patch store."""

    name: str = "cohort"
    manifest: str = "manifest.csv"
    spacing_mm: float = 1.0              # isotropic resampling spacing (mm)
    patch_size: int = 32                 # cube side in voxels at ``spacing_mm``
    landmark_step_mm: float = 26.0       # atlas grid step (the anchor: 26 mm)
    landmark_min_lung_fraction: float = 0.1
    lung_seg: str = "auto"               # "auto" (manifest mask, else threshold), threshold, lungmask, totalsegmentator
    lung_model_path: str | None = None   # local weights of the lungmask / TotalSegmentator backend
    min_lung_volume_l: float = 0.5
    store: str | None = None          # patch store folder; default {data_home}/stores/<name>-<hash>
    outcomes: dict[str, str] = field(default_factory=lambda: dict(COPDGENE_OUTCOME_COLUMNS))
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    fov: FovConfig = field(default_factory=FovConfig)
    synthetic: SyntheticSpec | None = None   # set: generated on first use
    # Pretrain fields this cohort's size needs (dotted keys as for --set), applied after the pretrain YAML.
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    # evaluate's read-out protocol for this cohort (copd_ifm.evaluation.readout); None: the declared default
    readout: str | None = None

    def validate(self) -> None:
        if not 0.2 <= self.spacing_mm <= 10:
            raise ValueError(f"spacing_mm must be in [0.2, 10] mm, got {self.spacing_mm}")
        if not 4 <= self.patch_size <= 128:
            raise ValueError(f"patch_size must be in [4, 128] voxels, got {self.patch_size}")
        if self.lung_seg not in {"auto", "threshold", "lungmask", "totalsegmentator"}:
            raise ValueError(f"lung_seg must be auto, threshold, lungmask or totalsegmentator, got {self.lung_seg!r}")

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest)

    @property
    def root(self) -> Path:
        """Folder that manifest-relative paths are resolved against."""
        return self.manifest_path.parent

    @property
    def store_path(self) -> Path:
        """``store``, else ``{data_home}/stores/<name>-<8 hex of the resolved manifest path>``: two
        cohorts whose manifests sit in folders of the same name never share a default store."""
        if self.store:
            return Path(self.store)
        key = hashlib.sha1(str(self.manifest_path.resolve()).encode()).hexdigest()[:8]
        return files.data_home() / "stores" / f"{self.name}-{key}"

    @property
    def cube_mm(self) -> float:
        """Patch side in mm."""
        return self.patch_size * self.spacing_mm


def read_manifest_csv(path: Path, **read_csv: Any) -> pd.DataFrame:
    """``pandas.read_csv(path, **read_csv)``; an empty or unparsable file is a one-line UserError."""
    import pandas as pd

    try:
        return pd.read_csv(path, **read_csv)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: manifest is empty (0 bytes or no header); write the header sid,image[,lung_mask] "
                        "and one row per subject") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise UserError(f"{path}: manifest is not a readable CSV ({reason}); fix or re-export it") from None


def _expand(value: str, base: Path) -> str:
    p = files.expand_home(value)
    return str(p if p.is_absolute() else (base / p).resolve())


#: The registered cohort whose settings a cohort written by ``copd-ifm synth`` takes (at its own spacing).
SYNTHETIC_TEMPLATE = "demo"
#: The file ``copd-ifm synth`` writes beside its manifest (its parameters): it marks a synthetic cohort.
PARAMS_FILE = "synth.json"


def synthetic_defaults(manifest: Path) -> dict[str, Any]:
    """Cohort fields for a manifest CSV written by ``copd-ifm synth`` (``synth.json`` beside it), else ``{}``.

    Such a cohort gets the demo's settings (outcome columns, landmark grid, the demo's short pretraining) at the
    spacing it was generated with, and patches of the demo's side in mm; a real manifest keeps the defaults
    (COPDGene's 1 mm, 32³).
    """
    import json

    params_path = manifest.parent / PARAMS_FILE
    if not params_path.is_file():
        return {}
    try:
        params = json.loads(params_path.read_text(encoding="utf-8"))
        spacing = float(params["spacing_mm"])
        synthetic = {"n": int(params["n"]), "seed": int(params["seed"]), "nuisance": float(params.get("nuisance", 1.0))}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{params_path}: not a synth.json written by `copd-ifm synth` (needs n, seed, spacing_mm); "
                        f"regenerate the cohort or remove the file to use the default settings") from None
    template = cfg.read_yaml(cfg.CONFIG_DIR / "cohorts" / f"{SYNTHETIC_TEMPLATE}.yaml")
    cube_mm = float(template["patch_size"]) * float(template["spacing_mm"])
    data = {k: v for k, v in template.items() if k not in ("name", "manifest", "store", "synthetic")}
    # ``synthetic`` marks the reports as synthetic; the cohort then resumes or is reused, never regenerated otherwise
    data.update(spacing_mm=spacing, patch_size=max(4, round(cube_mm / spacing)), synthetic=synthetic)
    return data


def resolve_cohort(spec: str, overrides: list[str] | None = None) -> CohortConfig:
    """``spec`` is a registered name, a cohort YAML or a manifest CSV → :class:`CohortConfig`."""
    path = Path(spec)
    if spec.endswith(".csv"):
        if not path.is_file():
            raise UserError(f"manifest not found: {spec} (give an existing CSV with columns sid,image)")
        data = {**synthetic_defaults(path), "name": path.resolve().parent.name, "manifest": str(path.resolve())}
        base = Path.cwd()
        source = spec
    else:
        yaml_path = cfg.named_config("cohorts", spec, "--cohort", "cohort", "a cohort YAML or a manifest CSV path")
        data = cfg.read_yaml(yaml_path)
        base = yaml_path.resolve().parent
        source = str(yaml_path)
    data = cfg.apply_overrides(data, overrides)
    for key in ("manifest", "store", "lung_model_path"):
        if isinstance(data.get(key), str):
            data[key] = _expand(data[key], base)
    return cfg.from_dict(CohortConfig, data, source)
