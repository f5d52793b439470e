"""A hand-made chest CT built from the packaged atlas lung mask (tests and benchmarks).

HU filling: air outside the body -1000, body (an elliptic cylinder around the
lungs' bounding box, 20 mm margin) +40, lungs -860, trachea and main bronchi -1000, plus
Gaussian noise. An optional affine (atlas → subject physical points) moves the
anatomy so that registration and landmark mapping can be checked against a
known answer.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.ct.io import grid_covering, outer_corners

BODY_HU, LUNG_HU, AIR_HU = 40.0, -860.0, -1000.0
BODY_MARGIN_MM = 20.0
TRACHEA_RADIUS_MM, BRONCHUS_RADIUS_MM, BRONCHUS_LENGTH_MM = 8.0, 5.0, 50.0


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of ``points`` [..., 3] to the segment a–b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def _physical(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Physical points (mm, [N, 3] x/y/z) of voxel indices ``zyx`` ([N, 3], numpy order)."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (zyx[:, ::-1] * np.asarray(image.GetSpacing())) @ d.T


def handmade_ct(spacing_mm: float = 2.0, affine: sitk.Transform | None = None, noise_hu: float = 25.0,
               airways: bool = True, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """A hand-made chest CT and its true lung mask at isotropic ``spacing_mm``.

    ``affine`` maps atlas physical points to subject physical points (mm); the
    subject grid has the atlas direction and covers the moved atlas box.
    Returns ``(ct, mask)``: int16 HU and uint8 (1 = lung, airways excluded),
    on the same grid.
    """
    atlas = load_atlas_mask(spacing_mm)
    if affine is None:
        labels_img = atlas
    else:
        moved = np.array([affine.TransformPoint(tuple(p)) for p in outer_corners(atlas)])
        grid = grid_covering(moved, spacing_mm, atlas.GetDirection())
        labels_img = sitk.Resample(atlas, grid.size, affine.GetInverse(), sitk.sitkNearestNeighbor,
                                   grid.origin, grid.spacing, grid.direction, 0, atlas.GetPixelID())
    labels = sitk.GetArrayFromImage(labels_img)                       # [z, y, x]
    lung_pts = _physical(labels_img, np.argwhere(labels > 0))
    low, high = lung_pts.min(0), lung_pts.max(0)
    centre, half = (low + high) / 2, np.sqrt(2) * (high - low) / 2 + BODY_MARGIN_MM   # ellipse around the box
    carina = np.array([centre[0], lung_pts[:, 1].mean(), low[2] + 0.65 * (high[2] - low[2])])
    top = _physical(labels_img, np.array([[0, 0, 0], np.array(labels.shape) - 1]))[:, 2].max() + 10.0
    tubes = [(carina, np.array([carina[0], carina[1], top]), TRACHEA_RADIUS_MM)]
    for lab in (50, 100):                                              # main bronchi: toward each lung's centre
        toward = _physical(labels_img, np.argwhere(labels == lab)).mean(0) - carina
        tubes.append((carina, carina + BRONCHUS_LENGTH_MM * toward / np.linalg.norm(toward), BRONCHUS_RADIUS_MM))
    tube = np.zeros(labels.shape, bool)
    if airways:
        for a, b, radius in tubes:
            box = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])])
            box = np.concatenate([box - radius, box + radius])
            index = np.array([labels_img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in box])[:, ::-1]
            lo = np.clip(np.floor(index.min(0)).astype(int), 0, labels.shape)
            hi = np.clip(np.ceil(index.max(0)).astype(int) + 1, 0, labels.shape)
            zyx = np.argwhere(np.ones(hi - lo, bool)) + lo
            near = _segment_distance(_physical(labels_img, zyx), a, b) <= radius
            tube[tuple(zyx[near].T)] = True
    rng = np.random.default_rng(seed)
    hu = np.empty(labels.shape, np.int16)
    yx = np.argwhere(np.ones(labels.shape[1:], bool))
    for z in range(labels.shape[0]):                                  # slice by slice: bounded memory at 1 mm
        points = _physical(labels_img, np.column_stack([np.full(len(yx), z), yx]))
        body = (((points[:, :2] - centre[:2]) / half[:2]) ** 2).sum(1) <= 1.0
        values = np.where(body, BODY_HU, AIR_HU)
        values[labels[z].ravel() > 0] = LUNG_HU
        values[tube[z].ravel()] = AIR_HU
        values += rng.normal(0.0, noise_hu, values.shape)
        hu[z] = np.clip(np.rint(values), -1024, 3071).reshape(labels.shape[1:])
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(labels_img)
    mask_img = sitk.GetImageFromArray(((labels > 0) & ~tube).astype(np.uint8))
    mask_img.CopyInformation(labels_img)
    return ct, mask_img
