"""Subject lung mask → atlas lung mask registration (SimpleITK) and landmark mapping.

The atlas mask is the fixed image and the subject mask the moving image, so
the resulting transform maps atlas physical points (mm) to subject physical
points: exactly what carrying atlas landmarks into a subject needs.

Speed: both masks are block-averaged to about ``downsample_mm`` (lung
fractions in [0, 1]; their partial volumes make the metric smooth), and the
multi-resolution pyramid (``shrink_factors``, ``smoothing_sigmas_mm``) runs on
top of that. The start is moments-based: centres of mass matched and a
per-axis scale from the second moments. Metric: mean squares — both images
are lung fractions on the same scale, so mean squares is the natural (and
fastest) choice; mutual information buys nothing for two masks. The
metric's cost is set by the fixed image's voxel count, so the atlas is cropped
to its lungs.

A registration counts as diverged (SubjectError) when its parameters are not
finite, its volume change ``|log det A|`` exceeds ``log(1 + max_scale_change)``,
or the warped subject mask overlaps the atlas mask with Dice < ``MIN_DICE``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.config import RegistrationConfig
from copd_ifm.ct.errors import SubjectError
from copd_ifm.ct.lung_mask import binarize

#: Dice (at the coarse spacing) below which a registration counts as diverged. Good affine fits
#: of lung masks reach 0.9 or more; a subject flipped or turned by 90° in its header ends near 0.7.
MIN_DICE = 0.8
#: Coarse voxels kept around the atlas lungs: the metric runs over the fixed image's voxels, so
#: cropping the (mostly empty) atlas box to the lungs is what makes it fast.
CROP_MARGIN = 3
#: Share of the fixed voxels the B-spline refinement samples: over all of them ITK's B-spline
#: metric is ~15× slower for the same result on lung masks.
BSPLINE_SAMPLING = 0.1


@dataclass
class Registration:
    """Result: ``transform`` maps atlas → subject physical points (mm)."""

    transform: sitk.Transform
    dice: float           # atlas vs warped subject mask, at the coarse spacing
    scale: float          # cube root of the affine volume change (1 = same lung size)


def crop_to_mass(image: sitk.Image, margin: int = CROP_MARGIN) -> sitk.Image:
    """``image`` cropped to the bounding box of its non-zero voxels plus ``margin`` voxels."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(image > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise SubjectError("empty lung mask at the registration spacing", code="empty_mask")
    box = stats.GetBoundingBox(1)
    low = [max(0, b - margin) for b in box[:3]]
    high = [min(n, b + w + margin) for b, w, n in zip(box[:3], box[3:], image.GetSize())]
    return sitk.RegionOfInterest(image, [h - lo for h, lo in zip(high, low)], low)


def coarse_fraction(mask: sitk.Image, target_mm: float) -> sitk.Image:
    """Lung fraction (float32 in [0, 1]) of ``mask`` in blocks of about ``target_mm``.

    The block side is the integer multiple of the mask's spacing closest to
    ``target_mm`` (exact block averages, no interpolation).
    """
    factor = max(1, int(round(target_mm / min(mask.GetSpacing()))))
    fraction = sitk.Cast(binarize(mask), sitk.sitkFloat32)
    return sitk.BinShrink(fraction, [factor] * 3) if factor > 1 else fraction


@lru_cache(maxsize=4)
def _atlas_coarse(spacing_mm: float, target_mm: float) -> sitk.Image:
    return crop_to_mass(coarse_fraction(load_atlas_mask(spacing_mm), target_mm))


def atlas_coarse(spacing_mm: float, target_mm: float) -> sitk.Image:
    """The packaged atlas mask at ``spacing_mm``, block-averaged to about ``target_mm`` and cropped
    to its lungs plus a margin: the fixed image of :func:`register_masks` (cached per process)."""
    return sitk.Image(_atlas_coarse(float(spacing_mm), float(target_mm)))


def _moments(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (mm) and per-axis standard deviation (mm) of a fraction image's mass."""
    weights = sitk.GetArrayFromImage(image).ravel()
    zyx = np.indices(image.GetSize()[::-1]).reshape(3, -1).T
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (zyx[:, ::-1] * np.asarray(image.GetSpacing())) @ d.T
    total = weights.sum()
    if not total > 0:
        raise SubjectError("empty lung mask at the registration spacing", code="empty_mask")
    centre = weights @ points / total
    spread = np.sqrt(weights @ (points - centre) ** 2 / total)
    return centre, spread


def initial_transform(fixed: sitk.Image, moving: sitk.Image, kind: str) -> sitk.Transform:
    """Moments start: centres of mass matched; for an affine also per-axis scale (ratio of spreads)."""
    if kind == "rigid":
        return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    centred = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    affine = sitk.AffineTransform(centred)
    (_, spread_f), (_, spread_m) = _moments(fixed), _moments(moving)
    affine.SetMatrix(tuple(np.diag(spread_m / spread_f).ravel()))
    return affine


def _method(reg: RegistrationConfig) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(reg.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(reg.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _unwrap(transform: sitk.Transform) -> sitk.Transform:
    """The first transform of a composite (what ``Execute`` returns wraps the optimised one), downcast."""
    if transform.GetName() == "CompositeTransform":
        return _unwrap(sitk.CompositeTransform(transform).GetNthTransform(0))
    return transform.Downcast()


def affine_part(transform: sitk.Transform) -> np.ndarray:
    """3×3 matrix of the affine (or rigid) component of a registration result."""
    return np.asarray(_unwrap(transform).GetMatrix()).reshape(3, 3)


def dice(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the fixed mask and the moving mask warped onto it, both thresholded at 0.5."""
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    a = sitk.GetArrayViewFromImage(fixed) >= 0.5
    b = sitk.GetArrayViewFromImage(warped) >= 0.5
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def register_masks(fixed: sitk.Image, moving: sitk.Image, reg: RegistrationConfig) -> Registration:
    """Register lung-fraction image ``moving`` (subject) to ``fixed`` (atlas), both from :func:`coarse_fraction`.

    Affine (or rigid) by regular-step gradient descent over the pyramid, then
    an optional B-spline refinement at the coarse spacing (L-BFGS-B, control
    points every ``bspline_mesh_mm``).
    Raises SubjectError when the result diverged (see module docstring).
    """
    method = _method(reg)
    # steps in mm (scales from physical shift): start at 1 mm, stop below 0.05 mm
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=0.05,
                                                    numberOfIterations=reg.iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial_transform(fixed, moving, reg.transform), inPlace=False)
    try:
        transform = _unwrap(method.Execute(fixed, moving))
        if reg.bspline:
            mesh = [max(1, int(round(n * s / reg.bspline_mesh_mm)))
                    for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
            bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
            refine = _method(RegistrationConfig(shrink_factors=[1], smoothing_sigmas_mm=[0.0]))  # finest only
            refine.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=reg.iterations)
            refine.SetMetricSamplingStrategy(refine.RANDOM)
            refine.SetMetricSamplingPercentage(BSPLINE_SAMPLING, 0)       # fixed seed: same result every run
            refine.SetMovingInitialTransform(transform)
            refine.SetInitialTransform(bspline, inPlace=True)
            refine.Execute(fixed, moving)
            transform = sitk.CompositeTransform([transform, bspline])   # applies the B-spline first
    except RuntimeError as exc:
        raise SubjectError(f"registration failed: {str(exc).splitlines()[-1].strip()[:160]}",
                           code="registration") from exc
    matrix = affine_part(transform)
    if not (np.all(np.isfinite(transform.GetParameters())) and np.all(np.isfinite(matrix))):
        raise SubjectError("registration diverged: non-finite transform parameters", code="registration")
    det = float(np.linalg.det(matrix))
    limit = math.log1p(reg.max_scale_change)
    if not det > 0 or abs(math.log(det)) > limit:
        raise SubjectError(f"registration diverged: volume scale {det:.3g} outside "
                           f"[{math.exp(-limit):.3g}, {math.exp(limit):.3g}] (registration.max_scale_change)",
                           code="registration")
    overlap = dice(fixed, moving, transform)
    if overlap < MIN_DICE:
        raise SubjectError(f"registration diverged: Dice {overlap:.2f} < {MIN_DICE} with the atlas mask", code="registration")
    return Registration(transform, overlap, det ** (1 / 3))


def map_points(transform: sitk.Transform, points_mm: np.ndarray) -> np.ndarray:
    """Apply ``transform`` to physical points ``points_mm`` ([N, 3] mm) → [N, 3] mm."""
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in points_mm], dtype=np.float64)
