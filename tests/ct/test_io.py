"""Reading CTs (NIfTI, MHA, NRRD, DICOM series), bad images, HU check, isotropic grids."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.io import check_hounsfield, isotropic_grid, mask_on_image_grid, read_image, resample

ATLAS_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _volume(shape=(12, 10, 8), spacing=(0.8, 0.9, 2.5), origin=(-40.0, 12.0, -300.0), seed=0) -> sitk.Image:
    """A small int16 CT-like volume (air and tissue) with non-trivial geometry; shape is [z, y, x]."""
    values = np.random.default_rng(seed).integers(-1000, 200, size=shape).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_read_file_formats_keep_values_and_geometry(tmp_path, suffix):
    image = _volume()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)


def write_dicom_series(image: sitk.Image, folder) -> None:
    """Write a 3-D int16 image as a DICOM series, one file per slice, with the tags a reader needs."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(map(str, (direction[0], direction[3], direction[6],
                                       direction[1], direction[4], direction[7])))
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2", "0020|0037": orientation,
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0013": str(k + 1), "0028|1052": "0", "0028|1053": "1"}
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


def test_read_dicom_series_folder(tmp_path):
    image = _volume(spacing=(0.7, 0.7, 2.0))
    write_dicom_series(image, tmp_path / "series")
    back = read_image(tmp_path / "series")
    assert back.GetSize() == image.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)


def test_multi_member_gzip_nifti_is_read_and_a_cut_one_is_truncated(tmp_path):
    """bgzip and some PACS exports write a .nii.gz as several gzip members; only the last trailer holds
    the size of the last member, which once made every such file look truncated."""
    image = _volume(shape=(20, 16, 12))
    plain = tmp_path / "ct.nii"
    sitk.WriteImage(image, str(plain))
    raw = plain.read_bytes()
    members = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    assert len(raw[1000:]) % 2**32 != len(raw) % 2**32                  # the last trailer alone disagrees
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(members)
    back = read_image(multi)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(members[: len(members) - 200])
    with pytest.raises(SubjectError, match="file is truncated"):
        read_image(cut)


def test_bad_inputs_raise_one_line_subject_errors(tmp_path):
    with pytest.raises(SubjectError, match="image not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom", encoding="utf-8")
    with pytest.raises(SubjectError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    good = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_volume(), str(good))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti file" * 50))
    for path in (truncated, garbage):
        with pytest.raises(SubjectError, match="cannot read") as info:
            read_image(path)
        assert "\n" not in str(info.value)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    with pytest.raises(SubjectError, match="2-D"):
        read_image(flat)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([6, 6, 6, 3], sitk.sitkInt16), str(four))
    with pytest.raises(SubjectError, match="4-D"):
        read_image(four)
    single = tmp_path / "single.nii.gz"
    sitk.WriteImage(sitk.Image([6, 6, 1], sitk.sitkInt16), str(single))
    with pytest.raises(SubjectError, match="single slice"):
        read_image(single)


def test_hounsfield_check():
    ct = _volume()
    check_hounsfield(ct)                                          # air and tissue in HU
    padded = sitk.GetArrayFromImage(ct)
    padded[:, :3, :] = -3024                                      # outside the scanner's field of view
    check_hounsfield(sitk.GetImageFromArray(padded))
    raw = sitk.GetImageFromArray(sitk.GetArrayFromImage(ct).astype(np.int32) + 1024)  # rescale not applied
    with pytest.raises(SubjectError, match="not in HU"):
        check_hounsfield(raw)
    unit = sitk.GetImageFromArray((sitk.GetArrayFromImage(ct).astype(np.float32) + 1000) / 1200)
    with pytest.raises(SubjectError, match="not in HU"):
        check_hounsfield(unit)


def test_mask_geometry_same_voxels_in_another_order_or_mismatch():
    image = _volume()
    assert mask_on_image_grid(image, sitk.Image(image)).GetSize() == image.GetSize()
    flipped = sitk.DICOMOrient(image, "LPI")                         # same voxels stored foot-first
    assert flipped.GetOrigin() != image.GetOrigin()
    back = mask_on_image_grid(image, flipped)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    other_size = _volume(shape=(12, 10, 9))
    moved = _volume(origin=(-30.0, 12.0, -300.0))
    respaced = _volume(spacing=(0.8, 0.9, 3.0))
    tilted = _volume()
    tilted.SetDirection((1, 0, 0, 0, 0.995, -0.0998, 0, 0.0998, 0.995))
    for mask, what in ((other_size, "size"), (moved, "origin"), (respaced, "spacing"), (tilted, "direction")):
        with pytest.raises(SubjectError, match=f"geometry mismatch.*{what}"):
            mask_on_image_grid(image, mask)


def test_isotropic_grid_already_there_is_a_no_op():
    image = _volume(spacing=(2.0, 2.0, 2.0))
    image.SetDirection(ATLAS_DIRECTION)
    grid = isotropic_grid(image, 2.0, ATLAS_DIRECTION)
    assert grid.matches(image)
    out = resample(image, grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image).astype(np.float32))


def test_isotropic_resampling_of_a_linear_ramp_is_exact_inside():
    """Linear interpolation reproduces a linear function of position: HU = a · p + b."""
    image = _volume(shape=(10, 30, 24), spacing=(0.7, 0.8, 2.5))
    a, b = np.array([2.0, -1.5, 0.8]), 100.0
    zyx = np.indices(sitk.GetArrayViewFromImage(image).shape).reshape(3, -1).T
    points = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1])) for p in zyx])
    ramp = sitk.GetImageFromArray((points @ a + b).reshape(sitk.GetArrayViewFromImage(image).shape).astype(np.float32))
    ramp.CopyInformation(image)
    grid = isotropic_grid(ramp, 1.0, ATLAS_DIRECTION)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    assert grid.size == tuple(int(n) for n in np.ceil(extent - 1e-3))
    out = resample(ramp, grid, default_value=-5000.0)
    values = sitk.GetArrayFromImage(out)
    zyx = np.argwhere(np.ones(values.shape, bool))
    points = np.array([out.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1])) for p in zyx])
    source = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    between_centres = np.all((source >= 0) & (source <= np.array(image.GetSize()) - 1), axis=1)
    assert between_centres.mean() > 0.6
    np.testing.assert_allclose(values.ravel()[between_centres], points[between_centres] @ a + b, atol=1e-2)


def test_reorientation_to_atlas_axes_flips_y_exactly():
    image = _volume(spacing=(2.0, 2.0, 2.0))                      # identity direction
    grid = isotropic_grid(image, 2.0, ATLAS_DIRECTION)
    out = resample(image, grid)
    assert out.GetDirection() == ATLAS_DIRECTION
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out),
                                  np.flip(sitk.GetArrayFromImage(image), axis=1).astype(np.float32))
