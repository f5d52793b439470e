"""DICOM folders → one checked CT volume in HU, with the series used on record.

Headers decide everything (pydicom, ``stop_before_pixels``), never file order,
SliceThickness or ITK's series reader, which assumes uniform spacing:

1. :func:`scan_folder` groups the files by SeriesInstanceUID, or, where a
   file has none, by (StudyInstanceUID, SeriesNumber, orientation,
   ConvolutionKernel, AcquisitionNumber);
2. :func:`choose_series` takes the manifest's ``series_uid``, else the rule:
   CT with image positions, then ImageType ORIGINAL/PRIMARY/AXIAL, then most
   slices, then the cohort's kernel preference; a tie is refused;
3. :func:`slice_geometry` sorts the slices by ImagePositionPatient projected on
   the slice normal and refuses Modality other than CT, too few slices, mixed
   orientation or matrix, duplicate positions, gantry tilt (positions sheared
   off the normal; with ``gantry_tilt: correct`` each slice is shifted in
   plane onto the orthogonal grid through the first slice, linear
   interpolation, -1024 HU shifted in), missing slices and uneven steps (or,
   with ``uneven: resample``, interpolates linearly onto a uniform grid);
4. :func:`read_series` decodes each file (SimpleITK/GDCM, else pydicom),
   HU = stored × RescaleSlope + RescaleIntercept, and sets origin, spacing and
   direction from the headers.
"""
from __future__ import annotations

import fnmatch
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from copd_ifm.cohort.config import DicomConfig
from copd_ifm.ct.errors import SubjectError

HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "SeriesDescription", "Modality",
               "ImageType", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
               "ConvolutionKernel", "AcquisitionNumber", "GantryDetectorTilt", "Rows", "Columns",
               "InstanceNumber"]
#: Positions closer than this along the normal are the same position (mm).
DUPLICATE_MM = 0.01
#: A step above this many median steps is a gap (missing slices), below it an uneven step.
GAP_STEPS = 1.5
#: Slice positions more than this share of a pixel off the normal line mean a sheared (tilted) grid.
SHEAR_PIXELS = 0.1
#: Value of the wedge a gantry-tilt correction shifts in from outside the acquired slices (air).
TILT_FILL_HU = -1024.0
CODEC_HINT = ("pip install 'copd-ifm[dicom-codecs]' (pylibjpeg with its libjpeg/openjpeg plugins), or "
              "decompress the series first (gdcmconv --raw, dcmdjpeg)")


@dataclass(frozen=True)
class SliceHeader:
    """One image file: its path, ImagePositionPatient, ImageOrientationPatient (None when absent), matrix."""

    path: Path
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    matrix: tuple[int, int, float, float]          # rows, columns, row spacing, column spacing (mm)


@dataclass
class Series:
    """The files of one series and the header fields that describe it (first file's values)."""

    uid: str                      # SeriesInstanceUID, or "" when the files have none
    study_uid: str
    number: str
    description: str
    modality: str
    image_type: tuple[str, ...]
    kernel: str
    acquisition: str
    thickness_mm: float | None
    tilt_deg: float
    transfer_syntax: str
    slices: list[SliceHeader] = field(default_factory=list)

    @property
    def ident(self) -> str:
        """What the manifest's ``series_uid`` names: the UID, or for a series without one
        ``noUID:<SeriesNumber>:<AcquisitionNumber>:<kernel>``."""
        return self.uid or f"noUID:{self.number}:{self.acquisition}:{self.kernel}"

    @property
    def transfer_syntax_name(self) -> str:
        return pydicom.uid.UID(self.transfer_syntax).name if self.transfer_syntax else "unknown"

    @property
    def original_primary_axial(self) -> bool:
        return {"ORIGINAL", "PRIMARY", "AXIAL"} <= {v.upper() for v in self.image_type}

    def label(self) -> str:
        """Short description for messages: ident, description, kernel, slice count."""
        return (f"{self.ident} ({self.modality} '{self.description}', kernel {self.kernel or '?'}, "
                f"{len(self.slices)} files)")


@dataclass(frozen=True)
class SliceGeometry:
    """Checked geometry of a series: files sorted along the normal, their positions on it, the grid."""

    files: list[Path]
    distances_mm: np.ndarray      # [N] position of each sorted file along the normal
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]   # x (column step), y (row step), z (slice step) in mm
    direction: tuple[float, ...]          # row-major 3×3, columns: row direction, column direction, normal
    resample: bool                        # the steps are uneven: interpolate onto the uniform z grid
    shifts_px: np.ndarray | None = None   # [N, 2] (row, column) in-plane shift undoing a gantry tilt's shear


def _text(ds: pydicom.Dataset, name: str) -> str:
    value = ds.get(name, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value or "").strip()


def _floats(ds: pydicom.Dataset, name: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(name)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _series_key(ds: pydicom.Dataset, orientation: tuple[float, ...] | None) -> tuple:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return ("uid", uid)
    rounded = tuple(round(v, 3) for v in orientation) if orientation else None
    return ("fallback", _text(ds, "StudyInstanceUID"), _text(ds, "SeriesNumber"), rounded,
            _text(ds, "ConvolutionKernel"), _text(ds, "AcquisitionNumber"))


def _new_series(ds: pydicom.Dataset) -> Series:
    thickness = ds.get("SliceThickness")
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    try:
        tilt = float(ds.get("GantryDetectorTilt") or 0.0)
    except (TypeError, ValueError):
        tilt = 0.0
    image_type = ds.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else tuple(str(v) for v in image_type)
    meta = getattr(ds, "file_meta", None)
    return Series(uid=_text(ds, "SeriesInstanceUID"), study_uid=_text(ds, "StudyInstanceUID"),
                  number=_text(ds, "SeriesNumber"), description=_text(ds, "SeriesDescription"),
                  modality=_text(ds, "Modality"), image_type=image_type, kernel=_text(ds, "ConvolutionKernel"),
                  acquisition=_text(ds, "AcquisitionNumber"), thickness_mm=thickness, tilt_deg=tilt,
                  transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""))


def scan_folder(folder: Path) -> tuple[list[Series], list[Path]]:
    """``(series, files that are not DICOM)`` under ``folder`` (recursive), series in the order first seen."""
    groups: dict[tuple, Series] = {}
    skipped: list[Path] = []
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = Path(root) / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
                skipped.append(path)   # pydicom raises several types for non-DICOM or damaged headers
                continue
            orientation = _floats(ds, "ImageOrientationPatient", 6)
            spacing = _floats(ds, "PixelSpacing", 2) or (0.0, 0.0)
            key = _series_key(ds, orientation)
            if key not in groups:
                groups[key] = _new_series(ds)
            groups[key].slices.append(SliceHeader(path, _floats(ds, "ImagePositionPatient", 3), orientation,
                                                  (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0),
                                                   *spacing)))
    return list(groups.values()), skipped


def _kernel_rank(kernel: str, preference: Sequence[str]) -> int:
    for rank, pattern in enumerate(preference):
        if fnmatch.fnmatch(kernel.lower(), pattern.lower()):
            return rank
    return len(preference)


def _rank(series: Series, preference: Sequence[str]) -> tuple:
    return (series.original_primary_axial, len(series.slices), -_kernel_rank(series.kernel, preference))


def choose_series(series: list[Series], folder: Path, wanted: str = "",
                  kernel_preference: Sequence[str] = ()) -> tuple[Series, str]:
    """``(series, note)``: the one named by ``wanted`` (a :attr:`Series.ident`), else the rule of the module
    docstring; ``note`` says why when the folder held several series (empty otherwise).

    SubjectError when ``wanted`` is not there, when no CT image series is, or when the rule ties.
    """
    found = "; ".join(s.label() for s in series)
    if wanted:
        match = [s for s in series if s.ident == wanted]
        if not match:
            raise SubjectError(f"series_uid {wanted} is not in {folder} (found {found}); fix the manifest's "
                               "series_uid (copd-ifm inspect lists them)", code="series_not_found")
        if len(match) > 1:       # series without a UID that differ only in study or orientation
            raise SubjectError(f"series_uid {wanted} names {len(match)} series in {folder}; split the folder by "
                               "study or orientation", code="series_ambiguous")
        return match[0], ""
    images = [s for s in series if s.modality == "CT" and all(sl.position and sl.orientation for sl in s.slices)]
    if not images:
        raise SubjectError(f"no CT image series in {folder} (found {found}); give a folder holding an axial CT "
                           "series", code="no_ct_series")
    ranked = sorted(images, key=lambda s: _rank(s, kernel_preference), reverse=True)
    if len(series) == 1:
        return ranked[0], ""
    best = ranked[0]
    if len(ranked) > 1 and _rank(ranked[1], kernel_preference) == _rank(best, kernel_preference):
        tied = "; ".join(s.label() for s in ranked if _rank(s, kernel_preference) == _rank(best, kernel_preference))
        raise SubjectError(f"{folder} holds several equally eligible CT series ({tied}); name one in the "
                           "manifest's series_uid column or set the cohort's dicom.kernel_preference",
                           code="series_ambiguous")
    others = "; ".join(s.label() for s in series if s is not best)
    return best, (f"chose series {best.label()} of {len(series)} in {folder} (rule: CT, ORIGINAL/PRIMARY/AXIAL, "
                  f"most slices, kernel preference); not used: {others}; set series_uid to choose another")


def _unit_normal(orientation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _positions_text(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def slice_geometry(series: Series, folder: Path, options: DicomConfig) -> SliceGeometry:
    """Sorted files and grid of ``series``; SubjectError naming ``folder``, what was found and the fix."""
    where = f"series {series.ident} in {folder}"
    if series.modality != "CT":
        raise SubjectError(f"{where} has Modality {series.modality or 'missing'}, not CT; give a CT series "
                           "(or name one with series_uid)", code="not_ct")
    slices = series.slices
    bare = [s.path.name for s in slices if s.position is None or s.orientation is None]
    if bare:
        raise SubjectError(f"{where}: {len(bare)} of {len(slices)} files lack ImagePositionPatient or "
                           f"ImageOrientationPatient (e.g. {bare[0]}); not an image series", code="no_geometry")
    if len(slices) < options.min_slices:
        raise SubjectError(f"{where} has too few slices: {len(slices)} (need >= {options.min_slices} for a chest CT "
                           "volume); give the full series", code="too_few_slices")
    counts = Counter(tuple(np.round(s.orientation, 3)) for s in slices)
    usual = np.asarray(counts.most_common(1)[0][0])
    odd = [s.path.name for s in slices if np.abs(np.asarray(s.orientation) - usual).max() > 1e-3]
    if odd:
        raise SubjectError(f"{where} mixes slice orientations: {len(odd)} of {len(slices)} files (e.g. {odd[0]}) "
                           f"differ from the usual {tuple(float(v) for v in usual)}; split the series or name one "
                           "with series_uid", code="mixed_orientation")
    matrices = {s.matrix for s in slices}
    if len(matrices) > 1:
        raise SubjectError(f"{where} mixes matrices/pixel spacings {sorted(matrices)[:3]}; not one volume",
                           code="mixed_matrix")
    rows, cols, row_mm, col_mm = slices[0].matrix
    if min(row_mm, col_mm) <= 0:
        raise SubjectError(f"{where}: PixelSpacing missing or zero in {slices[0].path.name}", code="no_geometry")
    row, col, normal = _unit_normal(slices[0].orientation)
    positions = np.array([s.position for s in slices])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance, positions = distance[order], positions[order]
    files = [slices[i].path for i in order]
    steps = np.diff(distance)
    same = np.flatnonzero(steps < DUPLICATE_MM)
    if same.size:
        at = distance[same[0]]
        names = [f.name for f, d in zip(files, distance) if abs(d - at) < DUPLICATE_MM]
        raise SubjectError(f"{where}: duplicate slice positions, {names[:3]} ({len(names)} files) at {at:.2f} mm "
                           f"along the normal ({same.size} repeated position(s) in all); remove the copies or "
                           "split the acquisitions", code="duplicate_positions")
    lateral = (positions - positions[0]) - np.outer(distance - distance[0], normal)
    shear = float(np.linalg.norm(lateral, axis=1).max())
    shifts = None
    if shear > SHEAR_PIXELS * min(row_mm, col_mm) and options.gantry_tilt == "correct":
        # slice k lies a_k along the rows and b_k along the columns off the normal line through slice 0
        shifts = np.column_stack([lateral @ col / row_mm, lateral @ row / col_mm])
    elif shear > SHEAR_PIXELS * min(row_mm, col_mm):
        angle = np.degrees(np.arctan2(shear, distance[-1] - distance[0]))
        raise SubjectError(f"{where}: gantry tilt, slice positions sheared {shear:.1f} mm off the slice normal over "
                           f"{distance[-1] - distance[0]:.1f} mm ({angle:.1f} deg; GantryDetectorTilt "
                           f"{series.tilt_deg:g}); set the cohort's dicom.gantry_tilt: correct, tilt-correct it first (e.g. "
                           "dcm2niix) or use another series",
                           code="gantry_tilt")
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_STEPS * step)
    limit = options.resample_max_step_mm if options.uneven == "resample" else GAP_STEPS * step
    if gaps.size and steps.max() > limit:
        g = gaps[0]
        missing = int(round(steps[g] / step)) - 1
        raise SubjectError(f"{where}: missing slices, a gap of {steps[g]:.2f} mm between {distance[g]:.2f} and "
                           f"{distance[g + 1]:.2f} mm along the normal (about {missing} slices at {step:.2f} mm; "
                           f"{gaps.size} gap(s) in all); export the complete series", code="missing_slices")
    uneven = np.abs(steps - step) > options.slice_step_tolerance * step
    if uneven.any() and options.uneven != "resample":
        raise SubjectError(f"{where}: uneven slice spacing, steps {steps.min():.3f} to {steps.max():.3f} mm "
                           f"(median {step:.3f}, tolerance {options.slice_step_tolerance:.0%}) at positions "
                           f"{_positions_text(distance[np.flatnonzero(uneven)])} mm; set the cohort's "
                           "dicom.uneven: resample to interpolate onto a uniform grid", code="uneven_spacing")
    direction = np.column_stack([row, col, normal])
    return SliceGeometry(files, distance, tuple(float(v) for v in positions[0]), (col_mm, row_mm, step),
                         tuple(float(v) for v in direction.ravel()), bool(uneven.any()), shifts)


def _decode(path: Path, series: Series, folder: Path) -> np.ndarray:
    """One file's pixels in HU, ``[rows, columns]``: GDCM via SimpleITK (it applies the rescale), else pydicom."""
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="GDCMImageIO")).reshape(
            series.slices[0].matrix[:2])
    except RuntimeError:
        pass
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:  # how pydicom reports a missing pixel handler
        raise SubjectError(f"cannot decode {path.name} in {folder}: transfer syntax {series.transfer_syntax_name} "
                           f"({series.transfer_syntax}) is not decodable here ({type(exc).__name__}); {CODEC_HINT}",
                           code="undecodable") from exc
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float32) * slope + intercept


def resample_slices(volume: np.ndarray, distances: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """``(volume on the uniform positions, those positions)``: linear interpolation along axis 0 of
    ``volume`` ([N, rows, cols], slice n at ``distances[n]``, increasing) onto ``distances[0] + j * step``."""
    grid = distances[0] + step * np.arange(int(np.floor((distances[-1] - distances[0]) / step + 1e-6)) + 1)
    upper = np.clip(np.searchsorted(distances, grid, side="right"), 1, len(distances) - 1)
    lower = upper - 1
    weight = ((grid - distances[lower]) / (distances[upper] - distances[lower])).astype(np.float32)
    out = volume[lower] * (1 - weight)[:, None, None] + volume[upper] * weight[:, None, None]
    return out, grid


def read_series(series: Series, geometry: SliceGeometry, folder: Path) -> sitk.Image:
    """The series as a 3-D image in HU on the grid of ``geometry`` (header geometry, not ITK's)."""
    rows, cols = series.slices[0].matrix[:2]
    volume = np.empty((len(geometry.files), rows, cols), np.float32)
    for n, path in enumerate(geometry.files):
        volume[n] = _decode(path, series, folder)
        if geometry.shifts_px is not None:          # onto the orthogonal grid through slice 0 (linear)
            volume[n] = ndimage.shift(volume[n], geometry.shifts_px[n], order=1, cval=TILT_FILL_HU)
    if geometry.resample:
        volume, _ = resample_slices(volume, geometry.distances_mm, geometry.spacing[2])
    rounded = np.rint(volume)
    if np.array_equal(rounded, volume) and volume.min() >= -32768 and volume.max() <= 32767:
        volume = rounded.astype(np.int16)                      # integer HU: as compact as the scanner stored it
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


@dataclass(frozen=True)
class SeriesRead:
    """A DICOM folder read: the image, the series used, its geometry and the choice note."""

    image: sitk.Image
    series: Series
    geometry: SliceGeometry
    note: str

    def record(self) -> dict[str, Any]:
        """The fields ``records/<sid>.json`` and ``index.csv`` keep about the series used."""
        s = self.series
        return {"series_uid": s.ident, "series_description": s.description, "series_kernel": s.kernel,
                "series_slices": len(self.geometry.files), "slice_thickness_mm": s.thickness_mm,
                "slice_step_mm": round(self.geometry.spacing[2], 4), "transfer_syntax": s.transfer_syntax_name}


def scan_or_refuse(folder: Path) -> list[Series]:
    """The series under ``folder``; SubjectError when there is none."""
    series, skipped = scan_folder(folder)
    if not series:
        raise SubjectError(f"no DICOM series in folder {folder} ({len(skipped)} file(s), none readable as DICOM); give "
                           "the folder of one CT series", code="no_dicom")
    return series


def read_dicom_folder(folder: Path, options: DicomConfig | None = None, series_uid: str = "") -> SeriesRead:
    """Scan, choose, check and read the CT series of ``folder`` (the module docstring's steps)."""
    options = options or DicomConfig()
    series = scan_or_refuse(folder)
    chosen, note = choose_series(series, folder, series_uid, options.kernel_preference)
    geometry = slice_geometry(chosen, folder, options)
    return SeriesRead(read_series(chosen, geometry, folder), chosen, geometry, note)
