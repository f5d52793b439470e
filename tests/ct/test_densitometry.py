"""%LAA-950, Perc15 and lung volume against hand computation."""
from __future__ import annotations

import numpy as np
import pytest

from copd_ifm.ct.densitometry import check_lung_mean_hu, densitometry
from copd_ifm.ct.errors import SubjectError


def test_densitometry_hand_computed():
    ct = np.full((4, 5, 10), 40.0)                                   # body
    mask = np.zeros(ct.shape, bool)
    mask[1:3, :, :] = True                                           # 100 lung voxels
    lung = np.concatenate([np.full(20, -1000.0), np.full(5, -950.0), np.linspace(-949, -700, 75)])
    ct[mask] = lung
    result = densitometry(ct, mask, voxel_mm3=8.0)
    assert result["laa950_pct"] == pytest.approx(20.0)               # < -950: -950 itself does not count
    # 15th percentile of 100 sorted values, linear interpolation: position 0.15 * 99 = 14.85 → both -1000
    assert result["perc15_hu"] == pytest.approx(-1000.0)
    assert result["lung_volume_l"] == pytest.approx(100 * 8.0 / 1e6)
    assert result["lung_mean_hu"] == pytest.approx((20 * -1000 + 5 * -950 + 75 * (-949 - 700) / 2) / 100)
    values = np.sort(lung)
    shifted = densitometry(ct + 0.0, mask & (ct > -1000), voxel_mm3=1.0)   # drop the 20 air voxels: 80 left
    position = 0.15 * 79
    expected = values[20 + int(position)] + (position % 1) * (values[21 + int(position)] - values[20 + int(position)])
    assert shifted["perc15_hu"] == pytest.approx(expected)
    assert shifted["laa950_pct"] == 0.0


def test_empty_mask_is_a_subject_error():
    with pytest.raises(SubjectError, match="empty lung mask"):
        densitometry(np.zeros((3, 3, 3)), np.zeros((3, 3, 3), bool), 1.0)


def test_integer_hu_at_the_threshold():
    ct = np.array([-1024, -951, -950, -950, -950, -949, -900, -850, -800, -700], dtype=np.int16).reshape(2, 5)
    result = densitometry(ct, np.ones(ct.shape, bool), voxel_mm3=1.0)
    assert result["laa950_pct"] == 20.0                               # -1024 and -951 of 10 voxels
    assert result["perc15_hu"] == pytest.approx(-951 + 0.35 * 1)      # position 0.15·9 = 1.35 between -951 and -950


@pytest.mark.parametrize("mean_hu, ok", [(-1000.0, False), (-991.0, False), (-990.0, True), (-850.0, True),
                                         (-500.0, True), (-499.0, False), (40.0, False)])
def test_lung_mean_hu_outside_minus_990_to_minus_500_fails_the_subject(mean_hu, ok):
    if ok:
        check_lung_mean_hu(mean_hu)
    else:
        with pytest.raises(SubjectError, match="implausible lung mean"):
            check_lung_mean_hu(mean_hu)
