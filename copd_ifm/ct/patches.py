"""Anatomical patches: axis-aligned cubes cut at mapped landmark corners.

As in the anchor, the atlas corner of each landmark is mapped into the
subject and the cube is cut there along the subject's voxel axes (not rotated
or scaled by the registration); voxels outside the image read -1024 HU.
Stored patches are int16 HU clipped to [-1024, 240].
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

HU_MIN, HU_MAX = -1024, 240


def subject_corners(image: sitk.Image, points_mm: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) voxel indices in ``image`` of physical points ``points_mm`` ([L, 3]) → float32 [L, 3]."""
    return np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points_mm],
                    dtype=np.float32).reshape(-1, 3)


def corner_voxels(corners: np.ndarray) -> np.ndarray:
    """Nearest voxel of continuous corner indices (halves round up, like ITK): int64 [L, 3]."""
    return np.floor(np.asarray(corners, dtype=np.float64) + 0.5).astype(np.int64)


def extract_patches(volume: np.ndarray, corners: np.ndarray, size: int, fill: float = HU_MIN) -> tuple[np.ndarray, int]:
    """Cubes ``volume[k:k+size, j:j+size, i:i+size]`` for each corner (i, j, k) of ``corners`` ([L, 3] int).

    ``volume`` is a ``[z, y, x]`` array; returns ``([L, size, size, size]``
    array in (z, y, x) order and ``volume``'s dtype, number of cubes that
    reach outside ``volume`` (those parts hold ``fill``)).
    """
    shape = np.array(volume.shape)
    out = np.full((len(corners), size, size, size), fill, dtype=volume.dtype)
    partial = 0
    for n, corner in enumerate(np.asarray(corners)[:, ::-1]):           # (k, j, i) = numpy order
        low, high = corner, corner + size
        src_low, src_high = np.maximum(low, 0), np.minimum(high, shape)
        if np.any(low < 0) or np.any(high > shape):
            partial += 1
        if np.any(src_high <= src_low):
            continue
        dst = tuple(slice(a - c, b - c) for a, b, c in zip(src_low, src_high, low))
        out[(n,) + dst] = volume[tuple(slice(a, b) for a, b in zip(src_low, src_high))]
    return out, partial


def to_stored_hu(patches: np.ndarray) -> np.ndarray:
    """HU → int16 clipped to [-1024, 240] (the store's patch values)."""
    return np.clip(np.rint(patches), HU_MIN, HU_MAX).astype(np.int16)
