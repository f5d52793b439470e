"""Axis-aligned cubes at corners, -1024 padding outside the image, int16 clipping."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from copd_ifm.ct.patches import corner_voxels, extract_patches, subject_corners, to_stored_hu


def test_patches_equal_a_padded_brute_force_crop():
    rng = np.random.default_rng(0)
    volume = rng.normal(-500, 400, size=(20, 17, 15)).astype(np.float32)   # [z, y, x]
    size = 6
    corners = np.array([[0, 0, 0], [9, 11, 14], [-3, 4, 2], [12, 15, 17], [-10, -10, -10], [14, 16, 19]])  # (x, y, z)
    patches, partial = extract_patches(volume, corners, size)
    pad = 16
    padded = np.pad(volume, pad, constant_values=-1024)
    for patch, (i, j, k) in zip(patches, corners):
        expected = padded[k + pad:k + pad + size, j + pad:j + pad + size, i + pad:i + pad + size]
        np.testing.assert_array_equal(patch, expected)
    assert patches.shape == (6, size, size, size) and patches.dtype == volume.dtype
    assert partial == 4                                                # all but the first two reach outside
    assert np.all(patches[4] == -1024)                                 # entirely outside


def test_stored_hu_is_clipped_rounded_int16():
    values = np.array([-3000.0, -1024.4, -1023.6, 0.5, 239.6, 240.2, 2000.0])
    stored = to_stored_hu(values)
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, [-1024, -1024, -1024, 0, 240, 240, 240])


def test_subject_corners_and_rounding():
    image = sitk.Image(30, 30, 30, sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-10.0, 20.0, -300.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    points = np.array([[-10.0, 20.0, -300.0], [-6.0, 16.0, -290.0], [-8.9, 17.0, -299.0]])
    corners = subject_corners(image, points)
    np.testing.assert_allclose(corners, [[0, 0, 0], [2, 2, 5], [0.55, 1.5, 0.5]], atol=1e-5)
    np.testing.assert_array_equal(corner_voxels(corners), [[0, 0, 0], [2, 2, 5], [1, 2, 1]])
