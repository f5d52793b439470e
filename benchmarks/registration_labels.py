"""Does dropping the lungs' left/right labels cost registration accuracy? Known affines, both variants.

The anchor registers lung-mask *label* images (right 50, left 100) with mutual information; the project
binarises the masks (:func:`copd_ifm.ct.registration.coarse_fraction`) and registers lung fractions with
mean squares. This measures what the labels would buy: on the known-affine setup of
``tests/ct/test_registration.py`` (hand-made subjects = the atlas moved by a known affine, 2 mm grid,
6 mm registration spacing, the project's registration settings) every affine is registered twice,

* ``binary``: the project's fixed/moving images (lung fraction in [0, 1], left and right alike);
* ``labels``: the same blocks but weighted by label, right lung 0.5 and left lung 1.0 (the anchor's
  50/100 scaled to [0, 1]), so the metric tells the lungs apart;

and the landmark corners mapped by each result are compared with those mapped by the true affine (mean
distance in mm over the 575-rule corners). Prints one row per affine and the paired mean difference
(labels − binary) with a t interval over the affines.

    python benchmarks/registration_labels.py [--n 8] [--spacing 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import SimpleITK as sitk
from scipy import stats

from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.config import RegistrationConfig
from copd_ifm.ct.handmade import handmade_ct
from copd_ifm.ct.landmarks import atlas_landmarks
from copd_ifm.ct.registration import atlas_coarse, coarse_fraction, crop_to_mass, map_points, register_masks

REG = RegistrationConfig(downsample_mm=6.0)
LUNG_CENTRE = (0.0, -150.0, -1000.0)
RIGHT, LEFT = 50, 100   # the anchor's (and the packaged atlas') labels


def random_affine(rng: np.random.Generator) -> sitk.AffineTransform:
    """atlas → subject: per-axis scale 0.9–1.1, rotation up to 6° about a random axis, shift up to 15 mm."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-6, 6))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = sitk.AffineTransform(3)
    affine.SetCenter(LUNG_CENTRE)
    affine.SetMatrix(tuple((rotation @ np.diag(rng.uniform(0.9, 1.1, 3))).ravel()))
    affine.SetTranslation(tuple(rng.uniform(-15, 15, 3)))
    return affine


def labelled_fraction(labels: sitk.Image, target_mm: float) -> sitk.Image:
    """As :func:`coarse_fraction`, but right-lung voxels count 0.5 and left-lung voxels 1.0."""
    factor = max(1, int(round(target_mm / min(labels.GetSpacing()))))
    weights = (sitk.Cast(labels == RIGHT, sitk.sitkFloat32) * 0.5 + sitk.Cast(labels == LEFT, sitk.sitkFloat32))
    return sitk.BinShrink(weights, [factor] * 3) if factor > 1 else weights


def landmark_error_mm(truth: sitk.Transform, found: sitk.Transform, points: np.ndarray) -> float:
    return float(np.linalg.norm(map_points(found, points) - map_points(truth, points), axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="known affines")
    ap.add_argument("--spacing", type=float, default=2.0, help="subject and atlas grid (mm)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    atlas = load_atlas_mask(args.spacing)
    corners = atlas_landmarks(args.spacing, int(32 / args.spacing), 26.0, 0.1)
    points = np.array([atlas.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners])
    fixed = {"binary": atlas_coarse(args.spacing, REG.downsample_mm),
             "labels": crop_to_mass(labelled_fraction(atlas, REG.downsample_mm))}
    print(f"{platform.node()} {time.strftime('%Y-%m-%d')}: {args.n} known affines, {args.spacing:g} mm grid, "
          f"registration at {REG.downsample_mm:g} mm, {len(points)} landmark corners")
    print("| affine | binary error mm | labels error mm | binary s | labels s |")
    print("|---|---|---|---|---|")
    errors: dict[str, list[float]] = {"binary": [], "labels": []}
    for i in range(args.n):
        truth = random_affine(rng)
        _, mask = handmade_ct(args.spacing, truth, airways=False)
        # the subject's label image: the atlas labels carried by the same truth, inside the subject's mask
        labels = sitk.Resample(atlas, mask, truth.GetInverse(), sitk.sitkNearestNeighbor, 0, atlas.GetPixelID())
        labels = labels * sitk.Cast(mask, labels.GetPixelID())
        moving = {"binary": coarse_fraction(mask, REG.downsample_mm),
                  "labels": labelled_fraction(labels, REG.downsample_mm)}
        row = []
        for name in ("binary", "labels"):
            start = time.perf_counter()
            result = register_masks(fixed[name], moving[name], REG)
            row.append((landmark_error_mm(truth, result.transform, points), time.perf_counter() - start))
            errors[name].append(row[-1][0])
        print(f"| {i} | {row[0][0]:.3f} | {row[1][0]:.3f} | {row[0][1]:.1f} | {row[1][1]:.1f} |")
    b, lab = np.array(errors["binary"]), np.array(errors["labels"])
    d = lab - b
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"mean landmark error: binary {b.mean():.3f} mm (max {b.max():.3f}), labels {lab.mean():.3f} mm "
          f"(max {lab.max():.3f}); labels − binary {d.mean():+.3f} mm, 95 % t interval "
          f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] over {len(d)} affines")


if __name__ == "__main__":
    main()
