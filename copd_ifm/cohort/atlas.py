"""The packaged lung atlas (COPDGene atlas lung mask, MIT, see ``data/atlas/README.md``).

Geometry (SimpleITK, x/y/z order): 387 × 387 × 319 voxels at 1 mm, labels 0
background, 50 and 100 the two lungs.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from copd_ifm.files import package_path

ATLAS_DIR = package_path("copd_ifm.cohort", "data", "atlas")
ATLAS_MASK = ATLAS_DIR / "atlas_lung_mask.nii.gz"
LUNG_LABELS = (50, 100)


def atlas_mask_path() -> Path:
    """Path of the packaged atlas lung mask (NIfTI, 1 mm isotropic)."""
    return ATLAS_MASK


@lru_cache(maxsize=4)
def _load(spacing_mm: float) -> sitk.Image:
    image = sitk.ReadImage(str(ATLAS_MASK))
    if abs(spacing_mm - image.GetSpacing()[0]) < 1e-6:
        return image
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                         (spacing_mm,) * 3, image.GetDirection(), 0, image.GetPixelID())


def load_atlas_mask(spacing_mm: float = 1.0) -> sitk.Image:
    """Atlas lung mask resampled (nearest neighbour) to isotropic ``spacing_mm``.

    Returns a copy of a cached image, so callers may modify it. Labels 0/50/100.
    """
    return sitk.Image(_load(float(spacing_mm)))


def atlas_lung_array(spacing_mm: float = 1.0) -> np.ndarray:
    """Binary lung mask of the atlas as a ``[z, y, x]`` bool array at ``spacing_mm``."""
    return sitk.GetArrayFromImage(_load(float(spacing_mm))) > 0
