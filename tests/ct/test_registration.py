"""Mask → atlas registration: identity, a known shift + scaling, B-spline composition, divergence."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.config import RegistrationConfig
from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.handmade import handmade_ct
from copd_ifm.ct.landmarks import atlas_landmarks
from copd_ifm.ct.patches import subject_corners
from copd_ifm.ct.registration import atlas_coarse, coarse_fraction, map_points, register_masks

FAST = RegistrationConfig(downsample_mm=6.0)
LUNG_CENTRE = (0.0, -150.0, -1000.0)


def _affine(matrix=(1, 0, 0, 0, 1, 0, 0, 0, 1), shift=(0.0, 0.0, 0.0)) -> sitk.AffineTransform:
    """atlas → subject: p ↦ M (p - c) + c + shift, about a point near the atlas lungs."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter(LUNG_CENTRE)
    affine.SetMatrix(tuple(float(v) for v in matrix))
    affine.SetTranslation(shift)
    return affine


def _landmark_error_voxels(truth: sitk.Transform, reg: RegistrationConfig = FAST,
                           spacing: float = 4.0) -> tuple[float, object]:
    """Mean distance (subject voxels) between landmark corners mapped by the registration and by ``truth``."""
    ct, mask = handmade_ct(spacing, truth, airways=False)
    result = register_masks(atlas_coarse(spacing, reg.downsample_mm), coarse_fraction(mask, reg.downsample_mm), reg)
    atlas = load_atlas_mask(spacing)
    corners = atlas_landmarks(spacing, int(32 / spacing), 26.0, 0.1)
    points = np.array([atlas.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners])
    found = subject_corners(ct, map_points(result.transform, points))
    expected = subject_corners(ct, map_points(truth, points))
    return float(np.linalg.norm(found - expected, axis=1).mean()), result


def test_identity_registration_leaves_landmarks_in_place():
    error, result = _landmark_error_voxels(_affine())
    assert error < 0.1
    assert result.scale == pytest.approx(1.0, abs=0.01) and result.dice > 0.95


def test_known_shift_and_scaling_recovered_within_one_voxel():
    truth = _affine((1.08, 0, 0, 0, 0.93, 0, 0, 0, 1.05), shift=(14.0, -9.0, 11.0))
    error, result = _landmark_error_voxels(truth, spacing=2.0)
    assert error < 1.0
    assert result.scale == pytest.approx((1.08 * 0.93 * 1.05) ** (1 / 3), abs=0.01)


def test_rigid_registration_recovers_a_shift():
    error, _ = _landmark_error_voxels(_affine(shift=(-12.0, 8.0, 6.0)), RegistrationConfig(downsample_mm=6.0,
                                                                                          transform="rigid"))
    assert error < 1.0


def test_bspline_refinement_composes_after_the_affine():
    reg = RegistrationConfig(downsample_mm=6.0, bspline=True, bspline_mesh_mm=120.0, iterations=20)
    truth = _affine((1.05, 0, 0, 0, 0.96, 0, 0, 0, 1.0), shift=(6.0, 0.0, -5.0))
    error, result = _landmark_error_voxels(truth, reg)
    assert error < 1.0
    composite = sitk.CompositeTransform(result.transform)
    affine, bspline = composite.GetNthTransform(0), composite.GetNthTransform(1)
    assert bspline.GetName() == "BSplineTransform"
    point = (20.0, -140.0, -980.0)
    np.testing.assert_allclose(result.transform.TransformPoint(point),
                               affine.TransformPoint(bspline.TransformPoint(point)), atol=1e-9)


@pytest.mark.parametrize("matrix, reason", [
    ((0.6, 0, 0, 0, 0.6, 0, 0, 0, 0.6), "volume scale"),             # lungs a fifth of the atlas' volume
    ((1, 0, 0, 0, 1, 0, 0, 0, -1), "Dice"),                          # head and feet swapped in the header
])
def test_implausible_registration_is_a_subject_error(matrix, reason):
    _, mask = handmade_ct(4.0, _affine(matrix), airways=False)
    with pytest.raises(SubjectError, match=f"registration diverged.*{reason}"):
        register_masks(atlas_coarse(4.0, 6.0), coarse_fraction(mask, 6.0), FAST)
