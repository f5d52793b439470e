"""The atlas landmark lattice against brute force, and its table."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from copd_ifm.cohort.atlas import atlas_lung_array, load_atlas_mask
from copd_ifm.ct.landmarks import atlas_landmarks, landmark_table, step_voxels
from copd_ifm.errors import UserError


def _brute_force(mask: np.ndarray, size: int, step: int, fraction: float) -> set[tuple[int, int, int]]:
    """The anchor's loops: corners in range(0, n - size, step), kept if lung voxels > fraction · size³."""
    nz, ny, nx = mask.shape
    kept = set()
    for i, j, k in itertools.product(range(0, nx - size, step), range(0, ny - size, step), range(0, nz - size, step)):
        if mask[k:k + size, j:j + size, i:i + size].sum() > fraction * size ** 3:
            kept.add((i, j, k))
    return kept


def test_anchor_grid_at_1mm_has_575_landmarks_on_the_lattice():
    corners = atlas_landmarks(1.0, 32, 26.0, 0.1)
    assert corners.shape == (575, 3)
    assert np.all(corners % 26 == 0)
    size = np.array(load_atlas_mask(1.0).GetSize())
    assert np.all(corners >= 0) and np.all(corners < size - 32)
    order = np.lexsort((corners[:, 2], corners[:, 1], corners[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(corners)))    # x outermost, z innermost


def test_grid_equals_brute_force_at_4mm():
    mask = atlas_lung_array(4.0)
    corners = atlas_landmarks(4.0, 8, 26.0, 0.1)
    step = step_voxels(26.0, 4.0)
    assert step == 6
    assert set(map(tuple, corners.tolist())) == _brute_force(mask, 8, step, 0.1)


def test_threshold_rises_while_1000_or_more_cubes_pass():
    mask = atlas_lung_array(4.0)
    corners = atlas_landmarks(4.0, 8, 16.0, 0.1)                      # step 4 voxels: 2487 cubes pass 0.1
    counts = {t: len(_brute_force(mask, 8, 4, t)) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
    first = next(t for t, n in counts.items() if n < 1000)
    assert first == 0.8
    assert set(map(tuple, corners.tolist())) == _brute_force(mask, 8, 4, first)
    with pytest.raises(UserError, match="landmark_step_mm"):
        atlas_landmarks(4.0, 8, 8.0, 0.1)                             # step 2: thousands even when full


def test_landmark_table_positions_and_normalised_coords():
    corners = atlas_landmarks(4.0, 8, 26.0, 0.1)
    table = landmark_table(corners, 4.0)
    atlas = load_atlas_mask(4.0)
    assert list(table.columns) == ["landmark", "i", "j", "k", "x_mm", "y_mm", "z_mm", "nx", "ny", "nz"]
    row = table.iloc[7]
    corner = (int(row.i), int(row.j), int(row.k))
    assert (row.x_mm, row.y_mm, row.z_mm) == pytest.approx(atlas.TransformIndexToPhysicalPoint(corner))
    np.testing.assert_allclose(table[["nx", "ny", "nz"]].to_numpy(), corners / corners.max(0), rtol=1e-6)
