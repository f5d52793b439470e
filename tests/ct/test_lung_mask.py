"""Threshold lung segmentation on hand-made CTs, lung volume, the optional lungmask backend."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.handmade import handmade_ct
from copd_ifm.ct.lung_mask import (check_lung_volume, lung_volume_l, lungmask_segmentation, require_backend,
                                   threshold_segmentation, totalsegmentator_segmentation)
from copd_ifm.errors import UserError


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_threshold_segmentation_finds_lungs_without_airways():
    ct, truth = handmade_ct(4.0, seed=1)
    plain, _ = handmade_ct(4.0, airways=False, seed=1)               # same noise, no trachea or bronchi
    seg = sitk.GetArrayFromImage(threshold_segmentation(sitk.Cast(ct, sitk.sitkFloat32))) > 0
    lungs = sitk.GetArrayFromImage(truth) > 0
    tubes = sitk.GetArrayFromImage(ct) != sitk.GetArrayFromImage(plain)
    assert _dice(seg, lungs) > 0.97
    # the bronchi's tips deep in the lungs may be filled in as holes; the trachea and main bronchi may not
    assert np.count_nonzero(seg & tubes) < 0.05 * np.count_nonzero(tubes)
    above_lungs = np.argwhere(lungs)[:, 0].max() + 1
    assert np.count_nonzero(tubes[above_lungs:]) > 0 and np.count_nonzero(seg[above_lungs:]) == 0


def test_threshold_segmentation_without_trachea_and_with_lungs_cut_by_the_scan_range():
    ct, truth = handmade_ct(4.0, airways=False, seed=2)
    lungs = sitk.GetArrayFromImage(truth) > 0
    top = int(np.argwhere(lungs)[:, 0].max()) - 10                   # scan range ends inside the lungs
    cut_ct = ct[:, :, :top]
    seg = sitk.GetArrayFromImage(threshold_segmentation(sitk.Cast(cut_ct, sitk.sitkFloat32))) > 0
    assert _dice(seg, lungs[:top]) > 0.97


def test_lung_volume_closed_form():
    mask = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    mask.SetSpacing((2.0, 2.0, 2.5))
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[2:7, 1:9, 3:5] = 100                                           # labels count as lung
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(mask)
    assert lung_volume_l(image) == pytest.approx(5 * 8 * 2 * 10.0 / 1e6)
    assert check_lung_volume(image, 0.0005) == pytest.approx(0.0008)
    with pytest.raises(SubjectError, match="implausible lung mask: volume 0.0008 L < 0.5 L"):
        check_lung_volume(image, 0.5)


def test_lungmask_backend_missing_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lungmask", None)                # import fails as if not installed
    with pytest.raises(UserError, match="pip install lungmask"):
        lungmask_segmentation(sitk.Image(4, 4, 4, sitk.sitkInt16))


def test_threshold_segmentation_keeps_lung_touching_the_image_edge():
    """A small reconstruction field cuts the right lung at the image edge: the lung stays in the mask (so the
    field-of-view gate can say so) while the air around the body is still dropped."""
    ct, truth = handmade_ct(4.0, seed=3)
    lungs = sitk.GetArrayFromImage(truth) > 0
    cut = 28                                                           # lungs span x indices 11..83
    seg = sitk.GetArrayFromImage(threshold_segmentation(sitk.Cast(ct[cut:, :, :], sitk.sitkFloat32))) > 0
    assert _dice(seg, lungs[:, :, cut:]) > 0.95
    assert seg[:, :, 0].sum() > 0.5 * lungs[:, :, cut].sum()          # the cut face is in the mask
    assert not seg[:, [0, -1], :].any()                                # air around the body (lungs: y 20..74)


def test_threshold_segmentation_leaves_out_gas_below_the_diaphragm():
    """An abdominal scan: lung bases above, a large stomach gas bubble below them; the gas is not lung."""
    ct, truth = handmade_ct(4.0, airways=False, seed=4)
    lungs = sitk.GetArrayFromImage(truth) > 0
    values = sitk.GetArrayFromImage(ct).astype(np.float32)
    z = np.argwhere(lungs)[:, 0]
    bottom = int(z.min())
    base = values[: bottom + 6].copy()                                   # body below the lungs plus their bases
    body = base[0] > -400
    ys, xs = np.nonzero(body)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[: base.shape[1], : base.shape[2]]
    gas = ((yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2) & body              # a 48 mm-radius gas bubble
    base[: bottom][:, gas] = np.random.default_rng(0).normal(-1000, 25, (bottom, int(gas.sum())))
    below = np.zeros((bottom + 6,) + values.shape[1:], bool)
    below[:bottom] = gas
    assert below.sum() > lungs[: bottom + 6].sum()                        # more gas than lung in this scan
    image = sitk.GetImageFromArray(base)
    image.CopyInformation(ct[:, :, : bottom + 6])
    seg = sitk.GetArrayFromImage(threshold_segmentation(image)) > 0
    assert not np.any(seg & below)
    assert _dice(seg, lungs[: bottom + 6]) > 0.8


def _fake_module(monkeypatch, name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)


def test_optional_backends_need_a_local_model_path(monkeypatch, tmp_path):
    _fake_module(monkeypatch, "lungmask", LMInferer=object)
    with pytest.raises(UserError, match="set the cohort's lung_model_path to the R231 weights.*now unset"):
        require_backend("lungmask", None)
    with pytest.raises(UserError, match="now /nowhere"):
        require_backend("lungmask", "/nowhere")
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)
    with pytest.raises(UserError, match=r"pip install 'copd-ifm\[totalsegmentator\]'"):
        require_backend("totalsegmentator", str(tmp_path))
    assert require_backend("threshold", None) is None


def test_lungmask_and_totalsegmentator_plumbing(monkeypatch, tmp_path):
    """Stand-in packages with the real call signatures: the weights path reaches them, their labels come
    back on the CT's grid (lungmask: a [z, y, x] label array; TotalSegmentator: one NIfTI per lobe)."""
    ct, truth = handmade_ct(8.0, seed=5)
    lungs = sitk.GetArrayFromImage(truth) > 0
    weights = tmp_path / "unet_r231.pth"
    weights.write_bytes(b"weights")
    seen = {}

    class LMInferer:
        def __init__(self, modelpath=None, **kwargs):
            seen["lungmask"] = modelpath

        def apply(self, image):
            assert image.GetPixelID() == sitk.sitkInt16
            return lungs.astype(np.uint8) * 2                       # right/left labels

    _fake_module(monkeypatch, "lungmask", LMInferer=LMInferer)
    mask = lungmask_segmentation(ct, str(weights))
    assert seen["lungmask"] == str(weights)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), lungs)
    assert mask.GetOrigin() == ct.GetOrigin()

    def totalsegmentator(source, output, roi_subset, **kwargs):
        import os

        seen["totalseg"] = os.environ["TOTALSEG_WEIGHTS_PATH"], kwargs["device"]
        image = sitk.ReadImage(str(source))
        output.mkdir()
        half = lungs.shape[2] // 2
        for lobe in roi_subset:                                      # left lobes: one half, right: the other
            part = lungs.copy()
            part[:, :, half:] = False if "left" in lobe else part[:, :, half:]
            part[:, :, :half] = False if "right" in lobe else part[:, :, :half]
            piece = sitk.GetImageFromArray(part.astype(np.uint8))
            piece.CopyInformation(image)
            sitk.WriteImage(piece, str(output / f"{lobe}.nii.gz"))

    _fake_module(monkeypatch, "totalsegmentator")
    _fake_module(monkeypatch, "totalsegmentator.python_api", totalsegmentator=totalsegmentator)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    mask = totalsegmentator_segmentation(ct, str(tmp_path))
    assert seen["totalseg"] == (str(tmp_path), "cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), lungs)
