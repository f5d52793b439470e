"""``copd-ifm inspect``: what a cohort's files hold, before preprocessing them.

Every DICOM series under the given paths (headers only) with its UID,
modality, description, ImageType, kernel, slice count, thickness, slice step,
transfer syntax and the result of the geometry checks of
:mod:`copd_ifm.ct.dicom`; every image file SimpleITK reads (NIfTI, NRRD, MHA)
with its header. :func:`manifest_rows` turns that into a manifest: one row per
DICOM folder (the series the default rule picks, or none with the reason when
the rule cannot decide) and one per image file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import SimpleITK as sitk

from copd_ifm.cohort.config import DicomConfig
from copd_ifm.ct.dicom import Series, choose_series, scan_folder, slice_geometry
from copd_ifm.ct.errors import SubjectError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _series_row(series: Series, folder: Path, options: DicomConfig) -> dict[str, Any]:
    try:
        geometry = slice_geometry(series, folder, options)
        check, step = ("ok" if not geometry.resample else "ok (resampled)"), round(geometry.spacing[2], 4)
    except SubjectError as exc:
        check, step = f"{exc.code}: {exc}", None
    return {"path": str(folder), "kind": "dicom", "series_uid": series.ident, "modality": series.modality,
            "description": series.description, "image_type": "\\".join(series.image_type), "kernel": series.kernel,
            "n_slices": len(series.slices), "thickness_mm": series.thickness_mm, "step_mm": step,
            "transfer_syntax": series.transfer_syntax_name, "check": check}


def _image_row(path: Path) -> dict[str, Any]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return {"path": str(path), "kind": "image", "check": f"unreadable: {' '.join(str(exc).split())[-120:]}"}
    orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(reader.GetDirection()) \
        if reader.GetDimension() == 3 else ""
    return {"path": str(path), "kind": "image", "description": f"{reader.GetDimension()}-D {orientation}".strip(),
            "size": "x".join(map(str, reader.GetSize())),
            "spacing_mm": "x".join(f"{v:.4g}" for v in reader.GetSpacing()),
            "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
            "check": "ok" if reader.GetDimension() == 3 else f"not 3-D ({reader.GetDimension()}-D)"}


def _series_folder(series: Series) -> Path:
    return Path(os.path.commonpath([str(s.path.parent) for s in series.slices]))


def inspect_paths(paths: Iterable[Path], options: DicomConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(one row per series or image file, one manifest row per DICOM folder or image file)``."""
    rows: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if not path.exists():
            rows.append({"path": str(path), "kind": "missing", "check": "not found"})
            continue
        if path.is_file() and not path.name.lower().endswith(IMAGE_SUFFIXES):
            path = path.parent                      # a DICOM file stands for its folder
        if path.is_file():
            rows.append(_image_row(path))
            manifest.append({"image": path, **({} if rows[-1]["check"] == "ok" else {"note": rows[-1]["check"]})})
            continue
        series, others = scan_folder(path)
        by_folder: dict[Path, list[Series]] = {}
        for s in series:
            by_folder.setdefault(_series_folder(s), []).append(s)
        for folder, group in by_folder.items():
            rows.extend(_series_row(s, folder, options) for s in group)
            manifest.append(_manifest_entry(folder, group, options))
        for other in others:
            if other.name.lower().endswith(IMAGE_SUFFIXES):
                rows.append(_image_row(other))
                manifest.append({"image": other})
    return rows, manifest


def _manifest_entry(folder: Path, group: list[Series], options: DicomConfig) -> dict[str, Any]:
    try:
        chosen, _ = choose_series(group, folder, "", options.kernel_preference)
    except SubjectError as exc:
        return {"image": folder, "series_uid": "", "note": f"{exc.code}: choose a series_uid"}
    try:
        slice_geometry(chosen, folder, options)
        note = ""
    except SubjectError as exc:
        note = f"{exc.code}: preprocess will refuse this series"
    return {"image": folder, "series_uid": chosen.ident, "note": note}


def _sid(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "subject"


def manifest_table(entries: list[dict[str, Any]], out: Path) -> Any:
    """The manifest rows as a DataFrame (``sid, image, series_uid, note``) with ``image`` relative to
    ``out``'s folder and sids made unique from the file or folder names."""
    import pandas as pd

    seen: dict[str, int] = {}
    rows = []
    for entry in entries:
        sid = _sid(Path(entry["image"]))
        seen[sid] = seen.get(sid, 0) + 1
        if seen[sid] > 1:
            sid = f"{sid}-{seen[sid]}"
        image = os.path.relpath(Path(entry["image"]).resolve(), out.resolve().parent)
        rows.append({"sid": sid, "image": image, "series_uid": entry.get("series_uid", ""),
                     "note": entry.get("note", "")})
    return pd.DataFrame(rows, columns=["sid", "image", "series_uid", "note"])
