"""DICOM series written with pydicom: geometry from the headers, every broken series refused, the choice rule."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import RLELossless

from copd_ifm.cohort.config import DicomConfig

from copd_ifm.ct.dicom import read_dicom_folder, resample_slices, scan_folder
from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.io import read_image
from tests.ct.dicom_series import axial_positions, stored_values, write_series
from tests.helpers import REPO


def _refused(folder, code, match, **options):
    with pytest.raises(SubjectError, match=match) as info:
        read_dicom_folder(folder, DicomConfig(**options))
    assert info.value.code == code
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    return str(info.value)


def test_uniform_series_hu_and_geometry_from_headers(tmp_path):
    stored = stored_values(12)
    write_series(tmp_path, stored, axial_positions(12, 1.25), intercept=-1024, slope=1)
    image = read_image(tmp_path)
    # files are named in reverse order: sorting by position puts the lowest z first
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored.astype(np.int32) - 1024)
    np.testing.assert_allclose(image.GetOrigin(), (-40.0, -30.0, -200.0))
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 1.25))        # x = column step, y = row step
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())


def test_oblique_orientation_and_slope_give_header_direction_and_hu(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    row, col = (c, s, 0.0), (-s, c, 0.0)
    normal = np.cross(row, col)
    positions = [tuple(np.array([5.0, 2.0, 10.0]) + k * 2.0 * normal) for k in range(10)][::-1]
    stored = stored_values(10)
    write_series(tmp_path, stored, positions, orientation=row + col, slope=0.5, intercept=-1000)
    read = read_dicom_folder(tmp_path)
    direction = np.array(read.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], col, atol=1e-6)
    np.testing.assert_allclose(read.image.GetSpacing()[2], 2.0, rtol=1e-4)
    # positions were given highest first: the volume runs from the last file written
    np.testing.assert_allclose(sitk.GetArrayFromImage(read.image), stored[::-1] * 0.5 - 1000, atol=1e-3)
    np.testing.assert_allclose(read.image.GetOrigin(), positions[-1], atol=1e-3)


def test_missing_slices_are_refused_with_the_gap(tmp_path):
    positions = [p for p in axial_positions(60, 1.0) if not 10 < p[2] + 200 < 40]
    write_series(tmp_path, stored_values(len(positions)), positions)
    text = _refused(tmp_path, "missing_slices", "missing slices, a gap of 30.00 mm between -190.00 and -160.00")
    assert "about 29 slices" in text


def test_uneven_spacing_refused_or_resampled_onto_hand_computed_positions(tmp_path):
    z = [0.0, 1.0, 2.0, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5]
    stored = np.stack([np.full((4, 3), 100 * k, np.uint16) for k in range(len(z))])
    write_series(tmp_path, stored, [(0.0, 0.0, v) for v in z], intercept=0)
    _refused(tmp_path, "uneven_spacing", r"uneven slice spacing, steps 1.000 to 1.500 mm \(median 1.000")
    read = read_dicom_folder(tmp_path, DicomConfig(uneven="resample"))
    values = sitk.GetArrayFromImage(read.image)[:, 0, 0]
    # grid 0, 1, ..., 10 mm: z = 3 lies 1/3 of the way from slice 2 (2 mm) to slice 3 (3.5 mm), z = 4 at half
    # of 3.5→4.5, and every later grid point half-way between two slices
    expected = [0, 100, 200, 200 + 100 * (1 / 1.5), 350, 450, 550, 650, 750, 850, 950]
    np.testing.assert_allclose(values, expected, atol=1e-3)
    assert read.image.GetSpacing()[2] == pytest.approx(1.0)
    assert read.record()["slice_step_mm"] == 1.0


def test_resample_slices_closed_form():
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32) ** 2  # value = index
    distances = np.array([0.0, 1.0, 3.0, 4.0])
    out, grid = resample_slices(volume ** 2, distances, 1.0)
    np.testing.assert_allclose(grid, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(out[:, 0, 0], [0, 1, 2.5, 4, 9])             # z=2: half-way between 1 and 4


def test_duplicate_positions_are_refused(tmp_path):
    positions = axial_positions(12, 1.0) + [axial_positions(12, 1.0)[5]] * 8
    write_series(tmp_path, stored_values(20), positions)
    _refused(tmp_path, "duplicate_positions", r"duplicate slice positions.*\(9 files\) at -195.00 mm")


def test_gantry_tilt_is_refused(tmp_path):
    # a 15 deg tilt: each 2 mm step along z moves the slice 2·tan(15°) = 0.536 mm along y
    positions = [(0.0, k * 2.0 * np.tan(np.radians(15)), k * 2.0) for k in range(12)]
    write_series(tmp_path, stored_values(12), positions, tilt=15.0)
    _refused(tmp_path, "gantry_tilt", r"gantry tilt.*\(15.0 deg; GantryDetectorTilt 15\)")


def test_modality_too_few_slices_mixed_orientation(tmp_path):
    write_series(tmp_path / "mr", stored_values(12), axial_positions(12), modality="MR")
    with pytest.raises(SubjectError, match="no CT image series") as info:
        read_dicom_folder(tmp_path / "mr")
    assert "MR 'chest'" in str(info.value)
    mr = scan_folder(tmp_path / "mr")[0][0]
    with pytest.raises(SubjectError, match="Modality MR, not CT"):
        read_dicom_folder(tmp_path / "mr", series_uid=mr.ident)
    write_series(tmp_path / "two", stored_values(2), axial_positions(2))
    _refused(tmp_path / "two", "too_few_slices", r"too few slices: 2 \(need >= 10")
    tilted = [(1.0, 0.0, 0.0, 0.0, 0.995, -0.0998)] * 4
    write_series(tmp_path / "mixed", stored_values(12), axial_positions(12),
                 orientation=[(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)] * 8 + tilted)
    _refused(tmp_path / "mixed", "mixed_orientation", "mixes slice orientations: 4 of 12")


def test_two_series_the_choice_rule_and_the_manifest_choice(tmp_path):
    folder = tmp_path / "two"
    write_series(folder, stored_values(14), axial_positions(14), series_uid="1.2.9.1", kernel="B30f", prefix="a")
    write_series(folder, stored_values(14, seed=1) + 200, axial_positions(14), series_uid="1.2.9.2",
                 kernel="B70f", prefix="b", description="sharp")
    write_series(folder, stored_values(1), axial_positions(1), series_uid="1.2.9.3", prefix="c",
                 image_type="ORIGINAL\\PRIMARY\\LOCALIZER", description="scout")
    _refused(folder, "series_ambiguous", "several equally eligible CT series.*1.2.9.1.*1.2.9.2")
    read = read_dicom_folder(folder, DicomConfig(kernel_preference=["b3?f"]))
    assert read.series.uid == "1.2.9.1" and "chose series 1.2.9.1" in read.note and "1.2.9.3" in read.note
    assert read.record()["series_kernel"] == "B30f" and read.record()["series_slices"] == 14
    sharp = read_dicom_folder(folder, series_uid="1.2.9.2")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sharp.image), stored_values(14, seed=1).astype(int) - 824)
    assert sharp.note == ""
    with pytest.raises(SubjectError, match="series_uid 1.2.9.9 is not in") as info:
        read_dicom_folder(folder, series_uid="1.2.9.9")
    assert info.value.code == "series_not_found"
    # more slices wins when nothing else differs
    write_series(folder, stored_values(20), axial_positions(20), series_uid="1.2.9.4", prefix="d")
    assert read_dicom_folder(folder).series.uid == "1.2.9.4"


def test_empty_series_uids_fall_back_on_series_number(tmp_path):
    write_series(tmp_path, stored_values(20), axial_positions(20), series_uid="", series_number=2, prefix="a")
    write_series(tmp_path, stored_values(20, seed=3), axial_positions(20), series_uid="", series_number=3,
                 prefix="b", kernel="B70f")
    series, skipped = scan_folder(tmp_path)
    assert skipped == [] and sorted(len(s.slices) for s in series) == [20, 20]          # not one 40-slice stack
    read = read_dicom_folder(tmp_path, series_uid="noUID:3:1:B70f")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read.image), stored_values(20, seed=3).astype(int) - 1024)


def test_rle_series_decodes_to_the_same_hu(tmp_path):
    stored = stored_values(12, rows=8, cols=8)
    write_series(tmp_path / "raw", stored, axial_positions(12))
    write_series(tmp_path / "rle", stored, axial_positions(12), compress=RLELossless)
    raw, rle = read_dicom_folder(tmp_path / "raw"), read_dicom_folder(tmp_path / "rle")
    assert rle.record()["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(rle.image), sitk.GetArrayFromImage(raw.image))


def test_undecodable_transfer_syntax_names_it_and_the_extra(tmp_path):
    from pydicom.encaps import encapsulate

    paths = write_series(tmp_path, stored_values(12), axial_positions(12))
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"          # MPEG-2 video
        ds.PixelData = encapsulate([b"\xff\x0a" + b"\0" * 40])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    _refused(tmp_path, "undecodable", r"transfer syntax MPEG2 .*\(1.2.840.10008.1.2.4.100\).*copd-ifm\[dicom-codecs\]")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    _refused(tmp_path, "no_dicom", r"no DICOM series in folder .*\(1 file\(s\), none readable")


REAL = REPO / "tests" / "data" / "totalseg_example_ct_dicom"     # TotalSegmentator test data, Apache-2.0


def test_real_siemens_series_with_empty_uid_and_jpeg2000():
    """A scanner export: empty SeriesInstanceUID, JPEG 2000 lossless, kernel Br38f, 20 slices 2 mm apart.
    Checked against SimpleITK's own series reader on the same sorted files (uniform series: it agrees)."""
    series, skipped = scan_folder(REAL)
    assert len(series) == 1 and [p.name for p in skipped] == ["LICENSE", "README.md"]
    read = read_dicom_folder(REAL)
    assert read.record() == {"series_uid": "noUID::14:Br38f\\3", "series_description": "CT Body 3.0",
                             "series_kernel": "Br38f\\3", "series_slices": 20, "slice_thickness_mm": 3.0,
                             "slice_step_mm": 2.0, "transfer_syntax": "JPEG 2000 Image Compression (Lossless Only)"}
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in read.geometry.files])
    itk = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read.image), sitk.GetArrayFromImage(itk))
    np.testing.assert_allclose(read.image.GetOrigin(), (-249.51171875, -437.51171875, -804.5))
    np.testing.assert_allclose(read.image.GetOrigin(), itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.image.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    hu = sitk.GetArrayFromImage(read.image)
    assert hu.min() == -1024 and -100 < np.percentile(hu, 75) < 100            # air outside, soft tissue inside


def test_gantry_tilt_correction_onto_hand_computed_positions(tmp_path):
    """Slice k is shifted 0.5 mm along +y per 2 mm step (a 14 deg tilt); the scanner sampled HU = 2·y − 500
    at each pixel's true position. Corrected onto the orthogonal grid through slice 0, voxel (r, c, k) sits at
    y = r mm, so it must read 2·r − 500 wherever the shifted slice covers it, and −1024 HU in the wedge."""
    rows, cols, n = 20, 4, 12
    r = np.arange(rows)[None, :, None]
    k = np.arange(n)[:, None, None]
    hu = 2 * (k * 0.5 + r) - 500 + np.zeros((n, rows, cols))
    write_series(tmp_path, (hu + 1024).astype(np.uint16), [(0.0, 0.5 * i, 2.0 * i) for i in range(n)],
                 pixel_mm=(1.0, 1.0), tilt=14.0)
    _refused(tmp_path, "gantry_tilt", "gantry tilt")
    read = read_dicom_folder(tmp_path, DicomConfig(gantry_tilt="correct"))
    values = sitk.GetArrayFromImage(read.image)
    covered = r >= k * 0.5                                              # rows the shifted slice reaches
    expected = np.where(covered, 2 * r - 500, -1024) + np.zeros((n, rows, cols))
    np.testing.assert_allclose(values, expected, atol=1e-3)
    np.testing.assert_allclose(read.image.GetOrigin(), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(read.image.GetSpacing(), (1.0, 1.0, 2.0))
