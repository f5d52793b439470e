"""Field-of-view gates: lungs cut by the scan range or the reconstruction field fail the subject.

Two signs of an incomplete lung field, each with a cohort setting (``fov``):

* the lung mask on a face of the acquired image: lung voxels on the face over
  the largest lung section parallel to it (0 for lungs wholly inside; a lung
  cut at the apices has a whole section on the top face). Above
  ``max_edge_fraction`` the subject fails.
* mapped landmarks outside the image: the share of patches with at least half
  their voxels outside the subject grid. Above ``max_landmarks_outside`` the
  subject fails; below it those voxels read -1024 HU and each patch's outside
  share is stored (``outside/<sid>.npy``).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from copd_ifm.ct.errors import SubjectError

#: A patch with at least this share of its voxels outside the image counts as outside.
OUTSIDE_PATCH = 0.5


def face_fractions(mask: np.ndarray) -> np.ndarray:
    """``[3, 2]`` lung on the low/high face of each numpy axis of ``mask`` over its largest section across that axis."""
    out = np.zeros((3, 2))
    columns = mask.sum(axis=0, dtype=np.int32)                       # two passes over the volume, not three
    profiles = (np.count_nonzero(mask.reshape(len(mask), -1), axis=1), columns.sum(axis=1), columns.sum(axis=0))
    for axis, sections in enumerate(profiles):
        largest = sections.max()
        if largest:
            out[axis] = sections[0] / largest, sections[-1] / largest
    return out


def _face_names(image: sitk.Image) -> list[tuple[str, str]]:
    """Per numpy axis of ``image``'s array, what its low and high faces are in the patient (LPS)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    names = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))
    faces = []
    for axis in range(3):
        column = direction[:, 2 - axis]                       # numpy axis a is ITK index axis 2 - a
        lps = int(np.argmax(np.abs(column)))
        low, high = names[lps]
        faces.append((low, high) if column[lps] > 0 else (high, low))
    return faces


def check_lung_field(mask: sitk.Image, max_edge_fraction: float) -> float:
    """Largest face fraction of the lung ``mask`` (on the acquired image); SubjectError above ``max_edge_fraction``."""
    fractions = face_fractions(sitk.GetArrayViewFromImage(mask) > 0)
    axis, side = np.unravel_index(int(np.argmax(fractions)), fractions.shape)
    worst = float(fractions[axis, side])
    if worst > max_edge_fraction:
        face = _face_names(mask)[axis][side]
        what = "scan range" if face in ("superior", "inferior") else "image edge (field of view)"
        raise SubjectError(f"lungs cut by the field of view: the lung mask covers {worst:.0%} of its largest section "
                           f"on the {face} {what} (limit fov.max_edge_fraction {max_edge_fraction:g}); use a scan "
                           "covering the whole lungs", code="fov_cut")
    return worst


def outside_shares(shape: tuple[int, int, int], corners: np.ndarray, size: int) -> np.ndarray:
    """Share of each cube ``[k:k+size, j:j+size, i:i+size]`` (corners (i, j, k), [L, 3] int) outside a
    ``[z, y, x]`` volume of ``shape``: float32 [L]."""
    low = np.asarray(corners)[:, ::-1]
    inside = np.clip(np.minimum(low + size, shape) - np.maximum(low, 0), 0, size)
    return (1 - inside.prod(axis=1) / size ** 3).astype(np.float32)


def check_landmarks_inside(shares: np.ndarray, max_outside: float) -> float:
    """Share of patches at least :data:`OUTSIDE_PATCH` outside; SubjectError above ``max_outside``."""
    share = float(np.mean(shares >= OUTSIDE_PATCH)) if len(shares) else 0.0
    if share > max_outside:
        raise SubjectError(f"lungs cut by the field of view: {share:.1%} of the mapped landmarks' patches lie at least "
                           f"half outside the image (limit fov.max_landmarks_outside {max_outside:g}); use a scan "
                           "covering the whole lungs", code="fov_cut")
    return share
