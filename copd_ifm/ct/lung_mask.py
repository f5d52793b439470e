"""Lung masks: from the manifest, by thresholding the CT, or with the optional ``lungmask`` or
``TotalSegmentator`` packages (lazy imports, local weights at ``lung_model_path``: nothing is downloaded).

Threshold segmentation (the default when the manifest has no mask) of a CT in HU:

1. air-like voxels: HU < -400 (lung parenchyma and air lie below, soft tissue above);
2. drop, slice by slice, the air connected within the axial slice to the
   slice's border when it is pure air (mean below -975 HU: the air around the
   body, padding outside the reconstruction circle). A 3-D criterion would also
   drop lungs whose apex reaches air above the body, or lungs cut by the scan
   range; lung parenchyma touching the border (a small reconstruction field,
   mean -950 to -850 HU) stays, so the field-of-view gate can name it;
3. drop the trachea and main bronchi: region growing over air (<= -950 HU) from
   a seed in the trachea (a small air blob near the midline in the most
   superior slices), within a box around the central airways, with a stricter
   threshold whenever the growth leaks into the lungs (more than 0.3 L);
4. drop components of pure gas (mean below -975 HU: stomach and bowel gas
   below the diaphragm; parenchyma, even emphysematous, averages higher), then
   keep the two largest components (the second only if it has at least 10 %
   of the first's voxels: otherwise it is bowel gas or the like);
5. fill holes slice by slice, so that vessels enclosed by lung in a slice
   count as lung (as in standard densitometry masks).

Masks are ``sitk.sitkUInt8`` images, 1 = lung, on the CT's grid.
"""
from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from copd_ifm.ct.errors import SubjectError
from copd_ifm.errors import UserError

log = logging.getLogger(__name__)

LUNG_MAX_HU = -400.0
AIRWAY_THRESHOLDS_HU = (-950.0, -975.0, -995.0)
AIRWAY_MAX_L = 0.3
TRACHEA_AREA_MM2 = (60.0, 800.0)        # cross-section of an adult trachea is about 150-500 mm²
TRACHEA_SEARCH_FRACTION = 0.4           # look for the trachea in the top 40 % of the air extent
MIDLINE_TOLERANCE = 0.15                # trachea centre within 15 % of the air extent from the midline
AIRWAY_HALF_WIDTH_MM = 70.0             # main bronchi reach about 5 cm to each side of the midline
AIRWAY_DEPTH_MM = 160.0                 # and end about 15 cm below the top of the trachea in a chest CT
SECOND_LUNG_MIN_FRACTION = 0.1
PURE_AIR_MEAN_HU = -975.0               # outside air and gas average about -1000 HU, lung parenchyma -950 to -850


def lung_volume_l(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of ``mask`` in litres."""
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return count * float(np.prod(mask.GetSpacing())) / 1e6


def check_lung_volume(mask: sitk.Image, min_volume_l: float) -> float:
    """Lung volume in litres; SubjectError when it is below ``min_volume_l`` (empty or implausible mask)."""
    volume = lung_volume_l(mask)
    if volume < min_volume_l:
        raise SubjectError(f"implausible lung mask: volume {volume:.3g} L < {min_volume_l:g} L",
                           code="lung_volume")
    return volume


def binarize(labels: sitk.Image) -> sitk.Image:
    """Any label > 0 (e.g. the atlas' 50/100 or lungmask's 1/2) → 1, as uint8."""
    return sitk.Cast(labels > 0, sitk.sitkUInt8)


def _axes(image: sitk.Image) -> tuple[int, int, int]:
    """numpy axes of a ``[z, y, x]`` array: (superior axis, +1/-1 head-ward, left-right axis)."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)        # column c: physical direction of index axis c
    si = int(np.argmax(np.abs(d[2])))
    lr = int(np.argmax(np.abs(d[0])))
    return 2 - si, int(np.sign(d[2, si])), 2 - lr


def _trachea_seed(candidate: np.ndarray, image: sitk.Image) -> tuple[int, int, int] | None:
    """An (x, y, z) index inside the trachea, or None: a small air blob near the
    left-right midline in the most superior slices of ``candidate`` ([z, y, x] bool)."""
    si_axis, head, lr_axis = _axes(image)
    occupied = np.flatnonzero(candidate.any(axis=tuple(a for a in range(3) if a != si_axis)))
    lr_occupied = np.flatnonzero(candidate.any(axis=tuple(a for a in range(3) if a != lr_axis)))
    if occupied.size == 0:
        return None
    midline = (lr_occupied[0] + lr_occupied[-1]) / 2
    tolerance = MIDLINE_TOLERANCE * (lr_occupied[-1] - lr_occupied[0] + 1)
    n_search = max(1, int(TRACHEA_SEARCH_FRACTION * occupied.size))
    slices = occupied[::-1][:n_search] if head > 0 else occupied[:n_search]
    spacing = np.asarray(image.GetSpacing())[::-1]                   # [z, y, x] order
    pixel_mm2 = float(np.prod(np.delete(spacing, si_axis)))
    lr_in_plane = lr_axis if lr_axis < si_axis else lr_axis - 1
    for s in slices:
        plane = np.take(candidate, s, axis=si_axis)
        labels, n = ndimage.label(plane)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())[1:] * pixel_mm2
        centres = ndimage.center_of_mass(plane, labels, range(1, n + 1))
        for label, (area, centre) in enumerate(zip(areas, centres), start=1):
            if TRACHEA_AREA_MM2[0] <= area <= TRACHEA_AREA_MM2[1] and abs(centre[lr_in_plane] - midline) <= tolerance:
                pts = np.argwhere(labels == label)
                inner = pts[np.argmin(((pts - np.asarray(centre)) ** 2).sum(1))]
                zyx = list(inner)
                zyx.insert(si_axis, int(s))
                return int(zyx[2]), int(zyx[1]), int(zyx[0])
    return None


def _airways(ct: sitk.Image, candidate: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Trachea and main bronchi: ``(box, lumen)`` with ``box`` numpy slices of the ``[z, y, x]`` volume
    and ``lumen`` a bool array of the box's shape; None when not found or always leaking.

    The growing runs in a box around the trachea (AIRWAY_HALF_WIDTH_MM to each
    side, AIRWAY_DEPTH_MM below the seed), which holds the main bronchi and
    bounds the cost of a leak into emphysema.
    """
    seed = _trachea_seed(candidate, ct)
    if seed is None:
        log.debug("no trachea found; airways stay in the lung mask")
        return None
    si_axis, head, _ = _axes(ct)
    spacing = np.asarray(ct.GetSpacing())[::-1]
    centre = np.asarray(seed)[::-1]
    box = []
    for axis, (c, n, h) in enumerate(zip(centre, candidate.shape, spacing)):
        if axis == si_axis:
            depth = int(AIRWAY_DEPTH_MM / h)
            low, high = (c - depth, n) if head > 0 else (0, c + depth + 1)
        else:
            half = int(AIRWAY_HALF_WIDTH_MM / h)
            low, high = c - half, c + half + 1
        box.append(slice(int(max(0, low)), int(min(n, high))))
    box = tuple(box)
    # grow only through candidate air: never into the air around the body (an open airway at the top)
    hu = np.where(candidate[box], sitk.GetArrayViewFromImage(ct)[box], 0.0).astype(np.float32)
    region = sitk.GetImageFromArray(hu)
    local = tuple(int(v) for v in np.asarray(seed) - [box[2].start, box[1].start, box[0].start])
    voxel_l = float(np.prod(ct.GetSpacing())) / 1e6
    for threshold in AIRWAY_THRESHOLDS_HU:
        grown = sitk.ConnectedThreshold(region, seedList=[local], lower=-1e5, upper=threshold)
        lumen = sitk.GetArrayFromImage(grown) > 0
        if 0 < np.count_nonzero(lumen) * voxel_l <= AIRWAY_MAX_L:
            return box, lumen
    log.debug("airway growing leaked at every threshold; airways stay in the lung mask")
    return None


def _pure_air(labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Per label of ``labels`` (0 included), whether the mean HU of its voxels is below PURE_AIR_MEAN_HU."""
    counts = np.bincount(labels.ravel())
    sums = np.bincount(labels.ravel(), weights=hu.ravel())
    return sums < PURE_AIR_MEAN_HU * np.maximum(counts, 1)


def _border_connected(region: np.ndarray, si_axis: int, hu: np.ndarray | None = None) -> np.ndarray:
    """Voxels of ``region`` ([z, y, x] bool) connected, within their slice across ``si_axis``,
    to that slice's border; with ``hu``, only components of pure air (:func:`_pure_air`)."""
    structure = np.zeros((3, 3, 3), bool)
    plane = [slice(None)] * 3
    plane[si_axis] = 1
    structure[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
    labels, _ = ndimage.label(region, structure)
    moved = np.moveaxis(labels, si_axis, 0)
    border = np.unique(np.concatenate([moved[:, 0].ravel(), moved[:, -1].ravel(),
                                       moved[:, :, 0].ravel(), moved[:, :, -1].ravel()]))
    touching = np.zeros(labels.max() + 1, bool)
    touching[border] = True
    touching[0] = False                                              # label 0 is outside ``region``
    if hu is not None:
        touching &= _pure_air(labels, hu)
    return touching[labels]


def threshold_segmentation(ct: sitk.Image) -> sitk.Image:
    """Lung mask of a CT in HU by thresholding (steps in the module docstring); uint8 on the CT's grid."""
    hu = sitk.GetArrayViewFromImage(ct)
    air = hu < LUNG_MAX_HU
    si_axis, _, _ = _axes(ct)
    candidate = air & ~_border_connected(air, si_axis, hu)
    airways = _airways(ct, candidate)
    if airways is not None:
        # one voxel more than the grown lumen: its partial-volume rim is above the growing threshold
        box, lumen = airways
        candidate[box] &= ~ndimage.binary_dilation(lumen, ndimage.generate_binary_structure(3, 1))
    pieces, _ = ndimage.label(candidate)
    sizes = np.where(_pure_air(pieces, hu), 0, np.bincount(pieces.ravel()))[1:]
    order = np.argsort(sizes)[::-1]
    keep = order[:2] if len(sizes) > 1 and sizes[order[1]] >= SECOND_LUNG_MIN_FRACTION * sizes[order[0]] else order[:1]
    lungs = np.isin(pieces, keep[sizes[keep] > 0] + 1)
    filled = ~_border_connected(~lungs, si_axis)
    out = sitk.GetImageFromArray(filled.astype(np.uint8))
    out.CopyInformation(ct)
    return out


#: Computed lung-mask backends; the optional ones import their package only when used.
BACKENDS = ("threshold", "lungmask", "totalsegmentator")
#: What each optional backend needs: (module to import, pip name, weights).
_NEEDS = {"lungmask": ("lungmask", "lungmask", "the R231 weights file (unet_r231-d5d2fc3d.pth)"),
          "totalsegmentator": ("totalsegmentator.python_api", "TotalSegmentator",
                               "the TotalSegmentator weights folder (TOTALSEG_WEIGHTS_PATH, holding Dataset*/)")}
TOTALSEG_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                  "lung_middle_lobe_right", "lung_lower_lobe_right")


def require_backend(name: str, model_path: str | None) -> Path | None:
    """The local weights path of backend ``name``; UserError unless its package imports and, for an optional
    backend, ``model_path`` exists (nothing is downloaded at run time)."""
    if name not in _NEEDS:
        return None
    module, package, weights = _NEEDS[name]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"--lung-seg {name} needs the optional package {package!r} (pip install {package} or "
                        f"pip install 'copd-ifm[{name}]'); or use --lung-seg threshold") from exc
    if not model_path or not Path(model_path).exists():
        raise UserError(f"--lung-seg {name}: set the cohort's lung_model_path to {weights} on this machine "
                        f"(now {model_path or 'unset'}); models are never downloaded at run time")
    return Path(model_path)


def lungmask_segmentation(ct: sitk.Image, model_path: str | None = None) -> sitk.Image:
    """Lung mask from the ``lungmask`` U-net (Hofmanninger et al. 2020) with local weights; uint8 on the CT's grid."""
    weights = require_backend("lungmask", model_path)
    from lungmask import LMInferer

    inferer = LMInferer(modelpath=str(weights), tqdm_disable=True)
    labels = inferer.apply(sitk.Cast(ct, sitk.sitkInt16))            # [z, y, x]: 0 background, 1/2 lungs
    out = sitk.GetImageFromArray((np.asarray(labels) > 0).astype(np.uint8))
    out.CopyInformation(ct)
    return out


def totalsegmentator_segmentation(ct: sitk.Image, model_path: str | None = None) -> sitk.Image:
    """Lung mask as the union of TotalSegmentator's five lobes (local weights); uint8 on the CT's grid."""
    weights = require_backend("totalsegmentator", model_path)
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)              # read by TotalSegmentator when it runs
    from totalsegmentator.python_api import totalsegmentator

    import torch

    with tempfile.TemporaryDirectory(prefix="totalseg-") as tmp:
        source = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(source))
        totalsegmentator(source, Path(tmp) / "seg", roi_subset=list(TOTALSEG_LOBES), quiet=True,
                         device="gpu" if torch.cuda.is_available() else "cpu")
        lobes = [sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / "seg" / f"{lobe}.nii.gz"))) > 0
                 for lobe in TOTALSEG_LOBES]
    union = np.logical_or.reduce(lobes)
    if union.shape != sitk.GetArrayViewFromImage(ct).shape:
        raise SubjectError(f"TotalSegmentator returned a mask of shape {union.shape} for a CT of "
                           f"{sitk.GetArrayViewFromImage(ct).shape}", code="segmentation")
    out = sitk.GetImageFromArray(union.astype(np.uint8))
    out.CopyInformation(ct)
    return out


SEGMENTERS = {"threshold": lambda ct, _: threshold_segmentation(ct), "lungmask": lungmask_segmentation,
              "totalsegmentator": totalsegmentator_segmentation}
