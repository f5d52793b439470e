"""Classical CT densitometry of the lungs: the baseline COPD imaging papers report against.

Conventions as COPDGene's: measured on the acquired image and its lung mask
(not a resampled grid, whose interpolation smooths noise and lowers
%LAA-950), %LAA-950 counts lung voxels strictly below −950 HU (integer HU put
many voxels at exactly −950), Perc15 is the 15th percentile of lung HU.
"""
from __future__ import annotations

import numpy as np

from copd_ifm.ct.errors import SubjectError

LAA_THRESHOLD_HU = -950.0
PERCENTILE = 15.0


def densitometry(ct: np.ndarray, mask: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """%LAA-950, Perc15 and lung volume of a CT (HU, any shape) within a same-shape lung ``mask``.

    ``laa950_pct``: percent of lung voxels < −950 HU; ``perc15_hu``: 15th
    percentile of lung HU (linear interpolation); ``lung_volume_l``: voxel
    count × ``voxel_mm3`` in litres; ``lung_mean_hu``: mean lung HU.
    """
    lung = np.asarray(ct)[np.asarray(mask, dtype=bool)]
    if lung.size == 0:
        raise SubjectError("empty lung mask: no densitometry", code="empty_mask")
    return {"laa950_pct": float(100.0 * np.count_nonzero(lung < LAA_THRESHOLD_HU) / lung.size),
            "perc15_hu": float(np.percentile(lung, PERCENTILE)),
            "lung_volume_l": float(lung.size * voxel_mm3 / 1e6),
            "lung_mean_hu": float(lung.mean(dtype=np.float64))}


#: Plausible mean HU of a lung mask on a CT: below, the "lungs" are pure air (an all-air image, or a mask
#: outside the body); above, the mask covers soft tissue or the image is not in HU.
LUNG_MEAN_HU_RANGE = (-990.0, -500.0)


def check_lung_mean_hu(mean_hu: float) -> None:
    """SubjectError unless the lung mean HU lies in :data:`LUNG_MEAN_HU_RANGE`."""
    low, high = LUNG_MEAN_HU_RANGE
    if not low <= mean_hu <= high:
        what = "pure air: an all-air image or a mask outside the body" if mean_hu < low else \
            "soft tissue: the mask is not on the lungs, or the image is not in HU"
        raise SubjectError(f"implausible lung mean {mean_hu:.0f} HU (expected {low:.0f} to {high:.0f}); "
                           f"the lung mask holds {what}", code="lung_mean_hu")
