"""One subject through the pipeline: CT → lung mask → atlas registration → patches, densitometry, preview.

:func:`process_subject` never raises for a bad subject: every failure
becomes a ``failed`` record with a one-line reason. Its files go to the
store in this order: patches, centres, preview, and last the record, so a
crash mid-way leaves no ``ok`` record for partial files.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import SimpleITK as sitk

from copd_ifm import files
from copd_ifm.cohort.config import DicomConfig, FovConfig, RegistrationConfig
from copd_ifm.ct import store as st
from copd_ifm.ct.densitometry import check_lung_mean_hu, densitometry
from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.fov import check_landmarks_inside, check_lung_field, outside_shares
from copd_ifm.ct.io import (Grid, check_hounsfield, image_grid, isotropic_grid, mask_on_image_grid, read_ct,
                            read_image, resample)
from copd_ifm.ct.lung_mask import SEGMENTERS, binarize, check_lung_volume
from copd_ifm.ct.patches import corner_voxels, extract_patches, subject_corners, to_stored_hu
from copd_ifm.ct.registration import atlas_coarse, coarse_fraction, map_points, register_masks
from copd_ifm.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectTask:
    """One manifest row: ``image`` (file or DICOM folder; None if the row has none), optional ``lung_mask``
    and ``series_uid`` (which series of a DICOM folder; empty: the rule of :mod:`copd_ifm.ct.dicom`)."""

    sid: str
    image: Path | None
    lung_mask: Path | None = None
    qc: bool = False
    series_uid: str = ""


@dataclass(frozen=True)
class Settings:
    """What every subject of a cohort shares (picklable, sent once to each worker)."""

    store: Path
    spacing_mm: float
    patch_size: int
    lung_seg: str                      # auto | threshold | lungmask | totalsegmentator
    min_lung_volume_l: float
    registration: RegistrationConfig
    direction: tuple[float, ...]       # atlas direction cosines: the axes of every subject grid
    landmarks_mm: np.ndarray           # [L, 3] atlas corner positions (mm)
    settings_hash: str = ""            # st.settings_hash of the store-defining config fields
    dicom: DicomConfig = field(default_factory=DicomConfig)
    fov: FovConfig = field(default_factory=FovConfig)
    lung_model_path: str | None = None  # weights of the lungmask / totalsegmentator backend


@contextmanager
def _stage(record: dict[str, Any], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        record[f"{name}_s"] = round(time.perf_counter() - start, 4)


def _one_line(exc: object) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _lung_masks(task: SubjectTask, settings: Settings, image: sitk.Image, ct: sitk.Image,
                grid: Grid) -> tuple[sitk.Image, sitk.Image, str]:
    """``(mask on the isotropic grid, mask on the native image grid, source)``.

    A manifest mask is native already (resampled nearest-neighbour to the
    grid); a computed one (threshold, lungmask, totalsegmentator) is made on the isotropic CT and
    resampled nearest-neighbour back onto the native grid for densitometry.
    """
    source = settings.lung_seg
    if source == "auto":
        source = "manifest" if task.lung_mask is not None else "threshold"
    if source == "manifest":
        native = binarize(mask_on_image_grid(image, read_image(task.lung_mask)))
        return resample(native, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), native, source
    mask = SEGMENTERS[source](ct, settings.lung_model_path)
    return mask, resample(mask, image_grid(image), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), source


def process_subject(task: SubjectTask, settings: Settings) -> dict[str, Any]:
    """Preprocess one subject into ``settings.store``; returns (and writes) its index record.

    The record holds the identity of the input files as read (taken before
    reading, so a file replaced meanwhile is redone next run). A UserError
    (a full disk) stops the run instead of failing the subject.
    """
    record: dict[str, Any] = {"sid": task.sid, "status": "failed", "n_patches": 0, "sha1": "",
                              "image": str(task.image or ""), "error": "", "reason_code": "",
                              "series_requested": task.series_uid, "settings_hash": settings.settings_hash}
    start, cpu_start = time.perf_counter(), time.process_time()
    store = Path(settings.store)
    try:
        with _stage(record, "read"):
            if task.image is None:
                raise SubjectError("manifest row has no image path", code="no_image")
            record["inputs"] = {"image": st.input_identity(task.image), "mask": st.input_identity(task.lung_mask)}
            image, series = read_ct(task.image, settings.dicom, task.series_uid)
            if series is not None:
                record.update(series.record())
                if series.note:
                    record["series_note"] = series.note
            check_hounsfield(image, task.image.name)
            grid = isotropic_grid(image, settings.spacing_mm, settings.direction)
            ct = resample(image, grid)
        with _stage(record, "mask"):
            mask, native_mask, record["mask_source"] = _lung_masks(task, settings, image, ct, grid)
            record["lung_edge_fraction"] = round(check_lung_field(native_mask, settings.fov.max_edge_fraction), 4)
            check_lung_volume(mask, settings.min_lung_volume_l)
        with _stage(record, "densitometry"):   # COPDGene's way: the acquired image, not the resampled grid
            lung = sitk.GetArrayViewFromImage(native_mask) > 0
            record.update(densitometry(sitk.GetArrayViewFromImage(image), lung, float(np.prod(image.GetSpacing()))))
            check_lung_mean_hu(record["lung_mean_hu"])
            del image, native_mask
        with _stage(record, "register"):
            reg = settings.registration
            result = register_masks(atlas_coarse(settings.spacing_mm, reg.downsample_mm),
                                    coarse_fraction(mask, reg.downsample_mm), reg)
        with _stage(record, "patches"):
            corners = subject_corners(ct, map_points(result.transform, settings.landmarks_mm))
            ct_array = sitk.GetArrayViewFromImage(ct)                 # a view: `ct` stays referenced
            voxels = corner_voxels(corners)
            outside = outside_shares(ct_array.shape, voxels, settings.patch_size)
            record["landmarks_outside"] = round(check_landmarks_inside(outside, settings.fov.max_landmarks_outside), 4)
            raw, partial = extract_patches(ct_array, voxels, settings.patch_size)
            patches = to_stored_hu(raw)
        with _stage(record, "write"):
            record["sha1"] = files.save_npy(store / st.PATCHES / f"{task.sid}.npy", patches)
            files.save_npy(store / st.CENTERS / f"{task.sid}.npy", corners)
            files.save_npy(store / st.OUTSIDE / f"{task.sid}.npy", outside)
        with _stage(record, "qc"):
            if task.qc:
                from copd_ifm.ct.qc import save_qc_png

                mask_array = sitk.GetArrayViewFromImage(mask) > 0
                title = (f"{task.sid}: Dice {result.dice:.2f}, scale {result.scale:.2f}, "
                         f"lungs {record['lung_volume_l']:.2f} L")
                save_qc_png(store / st.QC / f"{task.sid}.png", ct_array, mask_array, corners,
                            settings.patch_size, title)
        record.update(status="ok", n_patches=len(patches), dice=round(result.dice, 4),
                      scale=round(result.scale, 4), n_partial=partial)
    except SubjectError as exc:
        record["error"], record["reason_code"] = _one_line(exc), exc.code
    except UserError:
        raise
    except Exception as exc:  # a bad subject must never stop the run; the reason says it is a bug
        log.debug("subject %s crashed", task.sid, exc_info=True)
        record["error"] = _one_line(f"internal error: {type(exc).__name__}: {exc}")
        record["reason_code"] = "internal"
    record["seconds"] = round(time.perf_counter() - start, 4)
    record["cpu_s"] = round(time.process_time() - cpu_start, 4)   # all threads of this process
    st.write_record(store, record)
    return record


def crash_record(task: SubjectTask, settings: Settings) -> dict[str, Any]:
    """Record (and write) the failure of a subject whose worker process died."""
    record = {"sid": task.sid, "status": "failed", "n_patches": 0, "sha1": "", "image": str(task.image or ""),
              "error": "worker process died on this subject (a crash in a native library, e.g. on a damaged file)",
              "reason_code": "worker_crash"}
    st.write_record(settings.store, record)
    st.running_path(settings.store, task.sid).unlink(missing_ok=True)
    return record


def run_subject(task: SubjectTask, settings: Settings) -> tuple[dict[str, Any], bool]:
    """``(record, skipped)``: the existing record when the subject is already done (same inputs and
    settings, checksum verified: :func:`copd_ifm.ct.store.is_done`), else a fresh :func:`process_subject`."""
    done = st.is_done(settings.store, task.sid, task.image, task.lung_mask, settings.settings_hash, task.series_uid)
    if done is not None:
        return done, True
    return process_subject(task, settings), False


# Worker-process side of the pool in copd_ifm.ct.preprocess: kept here so that a spawned worker
# imports only what one subject needs (not torch).
_SETTINGS: Settings | None = None


def _exit_with_parent(parent: int, poll_s: float) -> None:
    """Watchdog thread: end this worker once its parent is gone (a killed ``copd-ifm preprocess``
    would otherwise leave its pool's workers waiting for ever)."""
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def init_worker(settings: Settings, threads: int, parent: int, poll_s: float = 1.0) -> None:
    """Pool initializer: remember the cohort's settings, give ITK ``threads`` threads, and exit when
    process ``parent`` (the pool's owner) dies, checked every ``poll_s`` seconds."""
    global _SETTINGS
    _SETTINGS = settings
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    _exit_with_parent(parent, poll_s)


def work(task: SubjectTask) -> tuple[dict[str, Any], bool]:
    """Pool task: :func:`run_subject` with the settings given to :func:`init_worker`.

    ``records/<sid>.running`` exists while it runs and stays behind if the
    process dies, which tells the pool's owner whom to suspect.
    """
    if _SETTINGS is None:
        raise RuntimeError("init_worker was not called in this process")
    marker = st.running_path(_SETTINGS.store, task.sid)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        return run_subject(task, _SETTINGS)
    finally:
        marker.unlink(missing_ok=True)
