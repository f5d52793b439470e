"""Anatomical landmarks: a lattice of cubes on the atlas lung mask (the anchor's grid).

Cubes of side ``patch_size`` voxels slide over the atlas (at the cohort's
spacing) with a step of ``round(landmark_step_mm / spacing_mm)`` voxels, each
corner index running from 0 to ``size - patch_size`` (exclusive, as the
anchor's ``range``); a cube is kept when its lung fraction exceeds
``min_lung_fraction``, a threshold raised by 0.1 while 1000 or more cubes
pass. A landmark is the (i, j, k) = (x, y, z) index of its cube's corner. At
1 mm with 32/26 this gives 575 landmarks on the packaged atlas (the anchor's
own file has 581; 6 midline corners differ).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.errors import UserError

MAX_LANDMARKS = 1000
THRESHOLD_STEP = 0.1


def step_voxels(step_mm: float, spacing_mm: float) -> int:
    """Lattice step in voxels at ``spacing_mm`` (at least 1)."""
    return max(1, int(round(step_mm / spacing_mm)))


def lung_counts(mask: np.ndarray, size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Lung voxel counts of every lattice cube of a ``[z, y, x]`` bool mask.

    Returns ``(corners, counts)``: [N, 3] int (x, y, z) corner indices with
    each coordinate in ``range(0, n - size, step)`` and the [N] int counts.
    """
    volume = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    counts = F.avg_pool3d(volume, kernel_size=size, stride=step)[0, 0].double() * size ** 3
    counts = torch.round(counts).long().numpy()                      # [nz, ny, nx] sums over each cube
    keep = [np.arange(n)[np.arange(n) * step < dim - size] for n, dim in zip(counts.shape, mask.shape)]
    counts = counts[np.ix_(*keep)]
    kk, jj, ii = np.meshgrid(*keep, indexing="ij")
    corners = np.stack([ii, jj, kk], -1).reshape(-1, 3) * step
    return corners, counts.reshape(-1)


def atlas_landmarks(spacing_mm: float, patch_size: int, step_mm: float, min_lung_fraction: float) -> np.ndarray:
    """Landmark corners on the packaged atlas: [L, 3] int64 (i, j, k) atlas voxels at ``spacing_mm``,
    sorted as the anchor's loops (x outermost, z innermost)."""
    mask = sitk.GetArrayFromImage(load_atlas_mask(spacing_mm)) > 0
    corners, counts = lung_counts(mask, patch_size, step_voxels(step_mm, spacing_mm))
    threshold = min_lung_fraction
    kept = corners[counts > threshold * patch_size ** 3]
    while len(kept) >= MAX_LANDMARKS and threshold < 1:
        threshold += THRESHOLD_STEP
        kept = corners[counts > threshold * patch_size ** 3]
    if len(kept) == 0 or len(kept) >= MAX_LANDMARKS:
        raise UserError(f"landmark grid: {len(kept)} cubes of {patch_size} voxels at {spacing_mm} mm pass lung "
                        f"fraction {threshold:.1f}; adjust landmark_step_mm, patch_size or landmark_min_lung_fraction")
    order = np.lexsort((kept[:, 2], kept[:, 1], kept[:, 0]))
    return kept[order].astype(np.int64)


def normalised_coords(corners: np.ndarray) -> np.ndarray:
    """The anchor's node location input: corner / column max, float32 [L, 3]."""
    return (corners / np.maximum(corners.max(0), 1)).astype(np.float32)


def landmark_table(corners: np.ndarray, spacing_mm: float) -> pd.DataFrame:
    """One row per landmark: ``landmark`` id, atlas corner index ``i, j, k`` (voxels at
    ``spacing_mm``), corner position ``x_mm, y_mm, z_mm`` and normalised coords ``nx, ny, nz``."""
    atlas = load_atlas_mask(spacing_mm)
    mm = np.array([atlas.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners]).reshape(-1, 3)
    norm = normalised_coords(corners)
    return pd.DataFrame({"landmark": np.arange(len(corners)),
                         "i": corners[:, 0], "j": corners[:, 1], "k": corners[:, 2],
                         "x_mm": mm[:, 0], "y_mm": mm[:, 1], "z_mm": mm[:, 2],
                         "nx": norm[:, 0], "ny": norm[:, 1], "nz": norm[:, 2]})
