"""Shared fixtures: a tiny synthetic cohort and its patch store, built once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from copd_ifm.cohort.config import CohortConfig, resolve_cohort
from tests import helpers


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortConfig:
    """6 synthetic subjects at 4 mm, 8³ patches (32 mm cubes) on a 40 mm landmark grid, preprocessed."""
    from copd_ifm.cohort.synthetic import generate_cohort
    from copd_ifm.ct.preprocess import preprocess_cohort

    root = tmp_path_factory.mktemp("tiny_cohort")
    manifest = generate_cohort(root / "cohort", n=6, seed=3, spacing_mm=4.0, workers=1)
    spec = {"name": "tiny", "manifest": str(manifest), "spacing_mm": 4.0, "patch_size": 8,
            "landmark_step_mm": 40.0, "store": str(root / "store"),
            "outcomes": {"FEV1pp": "FEV1pp_utah", "FEV1FVC": "FEV1_FVC_utah", "GOLD": "finalGold",
                         "CLE": "Emph_Severity", "Paraseptal": "Emph_Paraseptal", "mMRC": "MMRCDyspneaScor"}}
    path = Path(root / "tiny.yaml")
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    cohort = resolve_cohort(str(path))
    preprocess_cohort(cohort, workers=1)
    return cohort


@pytest.fixture
def one_thread():
    """Two shared cores: one intra-op torch thread avoids oversubscription."""
    with helpers.one_thread():
        yield
