"""Real-cohort inputs through ``preprocess`` and ``inspect``: DICOM series (choice on record, broken geometry
refused), lungs cut by the field of view, failures grouped by reason code."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from copd_ifm.cli import main
from copd_ifm.cohort.config import CohortConfig, RegistrationConfig
from copd_ifm.ct.fov import face_fractions, outside_shares
from copd_ifm.ct.handmade import handmade_ct
from copd_ifm.ct.io import read_image
from copd_ifm.ct.preprocess import preprocess_cohort
from copd_ifm.ct.store import read_index
from tests.ct.dicom_series import axial_positions, series_from_image, stored_values, write_series

SPACING, PATCH = 4.0, 8
FAST = {"downsample_mm": 8.0, "shrink_factors": [2, 1], "smoothing_sigmas_mm": [4.0, 0.0]}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    ct, mask = handmade_ct(SPACING, seed=0)
    series_from_image(ct, root / "two", series_uid="1.2.7.1", kernel="B30f", prefix="a")
    sharp = sitk.Cast(sitk.Cast(ct, sitk.sitkInt32) + 200, sitk.sitkInt16)           # the +200 HU sharp copy
    series_from_image(sharp, root / "two", series_uid="1.2.7.2", kernel="B70f", prefix="b")
    series_from_image(ct[:, :, ::2], root / "rule", series_uid="1.2.7.3", prefix="c")  # fewer slices
    series_from_image(ct, root / "rule", series_uid="1.2.7.4", prefix="d")
    gap = series_from_image(ct, root / "gap", series_uid="1.2.7.5")
    for path in gap[30:38]:
        path.unlink()
    sitk.WriteImage(ct[:, :, :52], str(root / "apex_cut.nii.gz"))                      # lungs reach z index 71
    sitk.WriteImage(ct[28:, :, :], str(root / "side_cut.nii.gz"))
    sitk.WriteImage(mask[28:, :, :], str(root / "side_cut_mask.nii.gz"))
    rows = [("chosen", "two", "1.2.7.1", ""), ("ruled", "rule", "", ""), ("gap", "gap", "", ""),
            ("ambiguous", "two", "", ""), ("apex", "apex_cut.nii.gz", "", ""),
            ("side", "side_cut.nii.gz", "", "side_cut_mask.nii.gz"), ("side_thr", "side_cut.nii.gz", "", "")]
    pd.DataFrame(rows, columns=["sid", "image", "series_uid", "lung_mask"]).to_csv(root / "manifest.csv", index=False)
    cohort = CohortConfig(name="real", manifest=str(root / "manifest.csv"), spacing_mm=SPACING, patch_size=PATCH,
                          store=str(root / "store"), registration=RegistrationConfig(**FAST))
    return root, preprocess_cohort(cohort, workers=1, qc_samples=0)


def test_series_choice_is_on_record(real_store):
    _, store = real_store
    index = read_index(store.path / "index.csv").set_index("sid")
    assert index.loc["chosen", "status"] == "ok" and index.loc["chosen", "series_uid"] == "1.2.7.1"
    assert index.loc["chosen", "series_kernel"] == "B30f" and index.loc["chosen", "series_slices"] == 80
    assert index.loc["ruled", "series_uid"] == "1.2.7.4"                                # most slices
    assert index.loc["ruled", "slice_step_mm"] == pytest.approx(SPACING)
    record = __import__("json").loads((store.path / "records" / "ruled.json").read_text())
    assert record["series_note"].startswith("chose series 1.2.7.4") and "1.2.7.3" in record["series_note"]
    # the series read back is the source CT: same HU at the same physical voxels (its normal points down,
    # so the slices come in the other order)
    source = handmade_ct(SPACING, seed=0)[0]
    back = read_image(real_store[0] / "rule")
    assert back.GetDirection()[8] == pytest.approx(-1.0)
    same = sitk.DICOMOrient(back, sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(source.GetDirection()))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(source))
    np.testing.assert_allclose(same.GetOrigin(), source.GetOrigin(), atol=1e-3)


def test_broken_series_and_cut_lungs_fail_with_codes(real_store):
    _, store = real_store
    failures = store.failures.set_index("sid")
    assert failures.loc["gap", "code"] == "missing_slices" and "gap of 36.00 mm" in failures.loc["gap", "reason"]
    assert failures.loc["ambiguous", "code"] == "series_ambiguous"
    assert failures.loc["apex", "code"] == "fov_cut" and "superior scan range" in failures.loc["apex", "reason"]
    assert failures.loc["side", "code"] == "fov_cut" and "image edge" in failures.loc["side", "reason"]
    # the threshold segmenter keeps the cut lung, so the reason is the field of view, not the lung volume
    assert failures.loc["side_thr", "code"] == "fov_cut" and "right image edge" in failures.loc["side_thr", "reason"]
    assert set(failures.index) == {"gap", "ambiguous", "apex", "side", "side_thr"}


def test_failures_by_reason_groups_on_codes(real_store, caplog):
    root, store = real_store
    with caplog.at_level(logging.WARNING):
        main(["preprocess", "--cohort", str(root / "manifest.csv"), "--out", str(store.path), "--workers", "1",
              "--set", f"spacing_mm={SPACING}", "--set", f"patch_size={PATCH}", "--set", "registration.downsample_mm=8",
              "--set", "registration.shrink_factors=[2,1]", "--set", "registration.smoothing_sigmas_mm=[4,0]"])
    line = [r.getMessage() for r in caplog.records if "failures by reason" in r.getMessage()]
    assert line == ["failures by reason: fov_cut ×3; missing_slices ×1; series_ambiguous ×1"]   # failed ones redo


def test_face_fractions_and_outside_shares_closed_form():
    mask = np.zeros((10, 8, 6), bool)
    mask[0:4, 2:6, 1:5] = True                             # touches the low z face with its full 4x4 section
    np.testing.assert_allclose(face_fractions(mask), [[1, 0], [0, 0], [0, 0]])
    shares = outside_shares((10, 8, 6), np.array([[0, 0, 0], [-2, 0, 0], [4, 6, 9]]), 4)
    # corner (i, j, k) = (-2, 0, 0): 2 of 4 x columns outside; (4, 6, 9): x 2/4, y 2/4, z 1/4 inside
    np.testing.assert_allclose(shares, [0, 0.5, 1 - (2 * 2 * 1) / 64])


def test_inspect_lists_series_and_writes_a_manifest(tmp_path, capsys):
    write_series(tmp_path / "a", stored_values(14), axial_positions(14), series_uid="1.2.8.1", kernel="B30f")
    write_series(tmp_path / "a", stored_values(14), axial_positions(14), series_uid="1.2.8.2", kernel="B70f",
                 prefix="b")
    write_series(tmp_path / "b", stored_values(12), axial_positions(12, 1.5), series_uid="1.2.8.3")
    write_series(tmp_path / "c", stored_values(12), [(0, 0, z) for z in [0, 1, 2, 3, 4, 5.5, 6.5, 7, 8, 9, 10, 11]],
                 series_uid="1.2.8.4")
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkInt16), str(tmp_path / "x.nii.gz"))
    out = tmp_path / "manifest.csv"
    assert main(["inspect", str(tmp_path), "--out", str(out)]) == 1                  # c fails its check
    text = capsys.readouterr().out
    assert "1.2.8.3: ok" in text and "1.2.8.4: uneven_spacing" in text and "B70f" in text
    manifest = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("sid")
    assert manifest.loc["a", "series_uid"] == "" and manifest.loc["a", "note"].startswith("series_ambiguous")
    assert manifest.loc["b", "series_uid"] == "1.2.8.3" and manifest.loc["b", "image"] == "b"
    assert manifest.loc["c", "note"].startswith("uneven_spacing") and manifest.loc["x", "image"] == "x.nii.gz"
    assert main(["inspect", str(tmp_path / "b"), "--set", "uneven=resample"]) == 0
