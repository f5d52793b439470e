"""Write small CT series with pydicom for the tests: any positions, orientations, UIDs and transfer syntax."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(folder: Path, stored: np.ndarray, positions: Sequence[Sequence[float]], *,
                 orientation: Sequence[float] | Sequence[Sequence[float]] = AXIAL, pixel_mm=(0.8, 0.7),
                 series_uid: str | None = None, study_uid: str = "1.2.3.4", series_number: int = 1,
                 modality: str = "CT", kernel: str = "B30f", description: str = "chest",
                 image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", slope: float = 1.0, intercept: float = -1024.0,
                 tilt: float = 0.0, prefix: str = "im", compress: str = "") -> list[Path]:
    """One file per slice of ``stored`` ([N, rows, cols] uint16 stored values) at ``positions`` (mm).

    Files are named in reverse slice order, so order by name is wrong on purpose. ``series_uid`` None:
    a fresh UID; "": the tag left empty. ``compress``: a pydicom transfer syntax UID to encode with.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid() if series_uid is None else series_uid
    orientations = [orientation] * len(stored) if np.ndim(orientation) == 1 else orientation
    paths = []
    for k, (pixels, position, iop) in enumerate(zip(stored, positions, orientations)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{len(stored) - k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, uid, study_uid
        ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = series_number, 1, k + 1
        ds.SeriesDescription, ds.ConvolutionKernel, ds.ImageType = description, kernel, image_type
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [str(v) for v in pixel_mm]
        ds.SliceThickness = "1.0"
        ds.GantryDetectorTilt = str(tilt)
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
        if compress:
            ds.compress(compress)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_positions(n: int, step: float = 1.0, start=(-40.0, -30.0, -200.0)) -> list[tuple[float, float, float]]:
    """``n`` positions along +z from ``start``, ``step`` mm apart."""
    return [(start[0], start[1], start[2] + k * step) for k in range(n)]


def stored_values(n: int, rows: int = 6, cols: int = 5, seed: int = 0) -> np.ndarray:
    """Random uint16 stored values (HU + 1024 for intercept -1024) of ``n`` slices."""
    return np.random.default_rng(seed).integers(0, 1300, size=(n, rows, cols)).astype(np.uint16)


def series_from_image(image, folder: Path, **kw) -> list[Path]:
    """A SimpleITK CT in HU (int16) written as a pydicom series with the image's geometry (intercept -1024)."""
    import SimpleITK as sitk

    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = tuple(direction[:, 0]) + tuple(direction[:, 1])
    positions = [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(image.GetDepth())]
    stored = (sitk.GetArrayFromImage(image).astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    spacing = image.GetSpacing()
    return write_series(folder, stored, positions, orientation=orientation, pixel_mm=(spacing[1], spacing[0]), **kw)
