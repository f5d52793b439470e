"""Read chest CTs and put them on the cohort's isotropic grid.

Supported inputs: any file SimpleITK reads (NIfTI ``.nii``/``.nii.gz``, NRRD,
MHA/MHD, ...) or a folder holding DICOM series (assembled and checked by
:mod:`copd_ifm.ct.dicom`). Every problem with one subject's image raises
:class:`~copd_ifm.ct.errors.SubjectError` with a one-line reason.

Grids: all subjects are resampled onto an isotropic grid whose axes follow the
atlas direction (see :func:`isotropic_grid`), so that axis-aligned patches cut
in voxel space have the same anatomical orientation in every subject whatever
orientation the scanner stored.
"""
from __future__ import annotations

import gzip
import itertools
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import nibabel
import numpy as np
import SimpleITK as sitk

from copd_ifm.cohort.config import DicomConfig
from copd_ifm.ct.dicom import SeriesRead, read_dicom_folder
from copd_ifm.ct.errors import SubjectError

#: Value written where a resampled CT has no data (air).
PAD_HU = -1024.0
#: Air must show up below this value in a CT stored in Hounsfield units.
AIR_MAX_HU = -500.0
#: Values below this are padding (e.g. -2048, -3024 outside the field of view), not tissue or air.
PADDING_BELOW_HU = -1100.0


def _itk_reason(exc: Exception) -> str:
    """An ITK exception as one short line: its message without the source location and class prefixes."""
    lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
    text = " ".join(re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-f]+\):|sitk::ERROR:|\[\w+\] \w+:)\s*", "", ln) for ln in lines)
    return text[:200] or type(exc).__name__


def _gzip_size(path: Path) -> int:
    """Uncompressed size of a gzip file, every member included (streamed, 1 MiB at a time).

    SubjectError if the stream ends early or is damaged.
    """
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                total += len(block)
    except EOFError as exc:
        raise SubjectError(f"cannot read {path.name}: file is truncated (the gzip stream ends early)",
                           code="unreadable") from exc
    except (OSError, zlib.error) as exc:
        raise SubjectError(f"cannot read {path.name}: damaged gzip ({' '.join(str(exc).split())[:120]})",
                           code="unreadable") from exc
    return total


def _check_nifti_complete(path: Path) -> None:
    """SubjectError if a NIfTI file holds less data than its header promises.

    ITK reads a truncated NIfTI without complaint (the missing voxels read 0),
    so compare the header's data size with the file size. For ``.nii.gz`` the
    gzip trailer's size field (mod 2^32) settles the usual single-member file
    at no cost; otherwise (several members, as bgzip writes, or a damaged
    file) the whole file is decompressed and counted.
    """
    try:
        header = nibabel.load(str(path))
    except Exception as exc:   # nibabel raises several types for a damaged header
        raise SubjectError(f"cannot read {path.name}: {' '.join(str(exc).split())[:160]}",
                           code="unreadable") from exc
    expected = int(header.dataobj.offset) + int(np.prod(header.shape)) * header.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            complete = int.from_bytes(fh.read(4), "little") == expected % 2**32 or _gzip_size(path) >= expected
    else:
        complete = path.stat().st_size >= expected
    if not complete:
        raise SubjectError(f"cannot read {path.name}: file is truncated (its header promises {expected} bytes)",
                           code="unreadable")


def read_image(path: str | Path) -> sitk.Image:
    """Read one 3-D scalar image (file or DICOM series folder, default series rule); see :func:`read_ct`."""
    return read_ct(path)[0]


def read_ct(path: str | Path, dicom: DicomConfig | None = None,
            series_uid: str = "") -> tuple[sitk.Image, SeriesRead | None]:
    """``(image, the DICOM series read or None for a file)`` of a file or DICOM folder.

    Raises SubjectError when the path is missing, the file is unreadable,
    corrupt or truncated, a DICOM folder fails the checks of
    :mod:`copd_ifm.ct.dicom`, or the image is not a 3-D scalar volume with at
    least 2 voxels per axis.
    """
    path = Path(path)
    if not path.exists():
        raise SubjectError(f"image not found: {path}", code="not_found")
    if series_uid and not path.is_dir():
        raise SubjectError(f"series_uid {series_uid} given but {path.name} is a file, not a DICOM folder; clear "
                           "the manifest's series_uid for this row", code="series_not_found")
    series = None
    try:
        if path.is_dir():
            series = read_dicom_folder(path, dicom, series_uid)
            image = series.image
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SubjectError(f"cannot read {path.name}: {_itk_reason(exc)}", code="unreadable") from exc
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    if image.GetDimension() != 3:
        raise SubjectError(f"{path.name} is {image.GetDimension()}-D (size {image.GetSize()}), expected a 3-D CT",
                           code="not_3d")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SubjectError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel, "
                           "expected a scalar CT", code="not_3d")
    if min(image.GetSize()) < 2:
        raise SubjectError(f"{path.name} has size {image.GetSize()}: a single slice, not a 3-D volume",
                           code="too_few_slices")
    return image, series


def check_hounsfield(image: sitk.Image, name: str = "image") -> None:
    """Raise SubjectError unless the intensities look like Hounsfield units.

    A chest CT in HU contains air (outside the body, lungs) near -1000 HU, so
    the 5th percentile of the non-padding voxels must be <= -500 HU. Raw
    scanner values (air near 0), normalised images and masks fail this.
    """
    values = sitk.GetArrayViewFromImage(image)[::2, ::4, ::4].ravel()
    data = values[values > PADDING_BELOW_HU]
    if data.size < 0.01 * values.size:
        raise SubjectError(f"intensities not in HU: {name} is almost all below {PADDING_BELOW_HU:.0f}",
                           code="not_hu")
    q05 = float(np.percentile(data, 5))
    if q05 > AIR_MAX_HU:
        raise SubjectError(f"intensities not in HU: 5th percentile of {name} is {q05:.4g}, expected air "
                           f"<= {AIR_MAX_HU:.0f} (apply the rescale slope/intercept)", code="not_hu")


def mask_on_image_grid(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``mask`` with its axes in ``image``'s order; SubjectError unless it then lies on ``image``'s voxel grid.

    A mask may store the same voxels in another axis order or direction (a
    DICOM series read foot-first, a NIfTI mask written head-first): that is
    reordered exactly (no interpolation). Anything else is a mismatch.
    """
    orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
    if sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(mask.GetDirection()) != orientation:
        mask = sitk.DICOMOrient(mask, orientation)
    if image.GetSize() != mask.GetSize():
        raise SubjectError(f"lung mask/image geometry mismatch: size {mask.GetSize()} vs {image.GetSize()}",
                           code="mask_mismatch")
    spacing = np.array(image.GetSpacing())
    if not np.allclose(mask.GetSpacing(), spacing, rtol=1e-3):
        raise SubjectError(f"lung mask/image geometry mismatch: spacing {mask.GetSpacing()} vs {image.GetSpacing()}",
                           code="mask_mismatch")
    if np.abs(np.subtract(mask.GetOrigin(), image.GetOrigin())).max() > 0.5 * spacing.min():
        raise SubjectError(f"lung mask/image geometry mismatch: origin {mask.GetOrigin()} vs {image.GetOrigin()}",
                           code="mask_mismatch")
    if not np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-3):
        raise SubjectError("lung mask/image geometry mismatch: direction cosines differ", code="mask_mismatch")
    return mask


@dataclass(frozen=True)
class Grid:
    """An image grid: size (voxels, x/y/z), spacing (mm), origin (mm), direction (row-major 3×3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def matches(self, image: sitk.Image) -> bool:
        """True if ``image`` already lies on this grid (up to float rounding)."""
        return (tuple(image.GetSize()) == self.size
                and np.allclose(image.GetSpacing(), self.spacing, rtol=1e-5)
                and np.allclose(image.GetOrigin(), self.origin, atol=1e-3 * min(self.spacing))
                and np.allclose(image.GetDirection(), self.direction, atol=1e-5))


def image_grid(image: sitk.Image) -> Grid:
    """The grid ``image`` lies on."""
    return Grid(tuple(int(n) for n in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))


def grid_covering(points: np.ndarray, spacing_mm: float, direction: Sequence[float]) -> Grid:
    """Isotropic grid with axes along ``direction`` whose voxels tile the box around ``points`` ([N, 3] mm)."""
    axes = np.asarray(direction, dtype=float).reshape(3, 3)   # column c: physical direction of index axis c
    local = np.asarray(points, dtype=float) @ axes           # coordinates along the new axes (mm)
    low, high = local.min(0), local.max(0)
    size = np.maximum(1, np.ceil((high - low) / spacing_mm - 1e-3)).astype(int)
    origin = axes @ (low + spacing_mm / 2)
    return Grid(tuple(int(n) for n in size), (float(spacing_mm),) * 3, tuple(float(o) for o in origin),
                tuple(float(d) for d in axes.ravel()))


def outer_corners(image: sitk.Image) -> np.ndarray:
    """Physical positions (mm, [8, 3]) of the outer voxel faces' corners of ``image``."""
    corners = itertools.product(*[(-0.5, n - 0.5) for n in image.GetSize()])
    return np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners])


def isotropic_grid(image: sitk.Image, spacing_mm: float, direction: Sequence[float]) -> Grid:
    """Isotropic grid with axes along ``direction`` that covers the physical extent of ``image``.

    An image already at ``spacing_mm`` with ``direction`` maps onto its own
    grid (no resampling needed).
    """
    return grid_covering(outer_corners(image), spacing_mm, direction)


def resample(image: sitk.Image, grid: Grid, interpolator: int = sitk.sitkLinear,
             default_value: float = PAD_HU, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """``image`` on ``grid`` (identity transform), cast to ``pixel_type``; no-op copy if already there."""
    if grid.matches(image):
        return sitk.Cast(image, pixel_type)
    return sitk.Resample(image, grid.size, sitk.Transform(), interpolator, grid.origin, grid.spacing,
                         grid.direction, default_value, pixel_type)
