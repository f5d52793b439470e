"""Render one synthetic chest CT (HU) and its lung mask from a subject's latents.

Pipeline, all at the output spacing ``h`` mm: the packaged atlas lung mask is
warped by a global scaling and a smooth random displacement (SimpleITK); a body
(mediastinum, ribs, spine, muscle, fat) is built around it and the grid cropped
to the body; parenchyma with correlated texture and a gravity gradient fills the
lungs; centrilobular emphysema (upper-zone clusters), sub-pleural bullae and
branching vessel and airway trees are drawn; a scanner blurs (reconstruction
kernel) and adds noise of the same grain.

Arrays are ``[z, y, x]`` (SimpleITK index order reversed) with the atlas
direction diag(1, −1, 1): z runs towards the head, y towards the front, x
towards the patient's left. Labels: 50 right lung, 100 left lung.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from copd_ifm.cohort.phenotypes import SubjectLatents

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BLOOD_HU = 45.0
BONE_HU = 450.0
PARENCHYMA_HU = -905.0       # inspiratory parenchyma between vessels
EMPHYSEMA_HU = -990.0
RIGHT_LABEL, LEFT_LABEL = 50, 100
RIB_LAYER_MM, MUSCLE_LAYER_MM = 9.0, 6.0


@dataclass
class Rendered:
    """One rendered subject: ``image`` int16 HU and ``mask`` uint8 labels, plus measured amounts.

    ``cle_fraction`` and ``pse_fraction`` are the centrilobular and bullous volume
    fractions of the lung mask as drawn (before the scanner); ``lung_volume_l`` in litres.
    """

    image: sitk.Image
    mask: sitk.Image
    lung_volume_l: float
    cle_fraction: float
    pse_fraction: float


def fat_thickness_mm(body_size: float) -> float:
    """Subcutaneous fat thickness (mm) for a body-size z-score."""
    return float(np.clip(7.0 + 4.0 * body_size, 2.0, 18.0))


def warp_atlas(atlas: sitk.Image, scale: tuple[float, float, float], rng: np.random.Generator,
               margin_mm: float = 8.0, displacement_sd_mm: float = 4.0, node_mm: float = 32.0) -> sitk.Image:
    """Atlas labels scaled about the lung centre by ``scale`` (x, y, z) and smoothly deformed.

    The output grid has the atlas spacing and direction and covers the scaled lung
    bounding box plus ``margin_mm``. The deformation is a random displacement field on
    nodes ``node_mm`` apart (sd ``displacement_sd_mm``, smoothed over neighbouring
    nodes) that SimpleITK interpolates linearly; labels are resampled nearest-neighbour.
    """
    h = atlas.GetSpacing()[0]
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.Execute(atlas > 0)
    box = np.array(shape_stats.GetBoundingBox(1), float)                    # x, y, z start, then sizes
    lo, hi = box[:3], box[:3] + box[3:] - 1
    centre_idx = (lo + hi) / 2
    half = (hi - lo) / 2 * np.asarray(scale) + margin_mm / h
    start = np.floor(centre_idx - half)
    size = [int(v) for v in np.ceil(2 * half) + 1]
    origin = atlas.TransformContinuousIndexToPhysicalPoint(start.tolist())

    affine = sitk.AffineTransform(3)
    affine.SetMatrix(np.diag(1.0 / np.asarray(scale)).ravel().tolist())
    affine.SetCenter(atlas.TransformContinuousIndexToPhysicalPoint(centre_idx.tolist()))

    nodes = [int(np.ceil(n * h / node_mm)) + 3 for n in size]
    coarse = ndi.gaussian_filter(rng.standard_normal((*nodes[::-1], 3)), (1, 1, 1, 0))
    coarse *= displacement_sd_mm / max(float(coarse.std()), 1e-6)
    field = sitk.GetImageFromArray(coarse, isVector=True)
    field.SetSpacing((node_mm,) * 3)
    field.SetDirection(atlas.GetDirection())
    field.SetOrigin(atlas.TransformContinuousIndexToPhysicalPoint((start - node_mm / h).tolist()))
    # A composite transform applies the last-added first: displace, then scale into the atlas.
    transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
    return sitk.Resample(atlas, size, transform, sitk.sitkNearestNeighbor, origin, (h,) * 3,
                         atlas.GetDirection(), 0, sitk.sitkUInt8)


@dataclass
class Body:
    """Tissue classes of the chest on a ``[z, y, x]`` grid (bool arrays)."""

    body: np.ndarray
    fat: np.ndarray
    bone: np.ndarray


def _fill_between(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels between the first and the last True voxel of each line along ``axis``."""
    n = mask.shape[axis]
    first = np.expand_dims(np.argmax(mask, axis), axis)
    last = np.expand_dims(n - 1 - np.argmax(np.flip(mask, axis), axis), axis)
    index = np.arange(n).reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    return (index >= first) & (index <= last) & np.expand_dims(mask.any(axis), axis)


def _per_slice(values: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Per-slice values ``[z]`` with gaps filled by interpolation, smoothed along z; → ``[z, 1, 1]``."""
    zs = np.arange(len(values))
    filled = np.interp(zs, zs[valid], values[valid])
    return ndi.gaussian_filter1d(filled, sigma, mode="nearest").astype(np.float32)[:, None, None]


def build_body(lung: np.ndarray, h: float, fat_mm: float, rng: np.random.Generator) -> Body:
    """Chest wall, spine and mediastinum around ``lung`` ([z, y, x] bool) at spacing ``h`` mm.

    The thorax is the lungs with the space between them filled (mediastinum); by
    depth outside it follow a rib/intercostal layer, muscle and ``fat_mm`` of fat.
    Ribs are bands every 26 mm sloping down towards the front, with a sternum; a
    vertebral body sits behind the mediastinum.
    """
    nz, ny, nx = lung.shape
    thorax = _fill_between(lung, 2) | _fill_between(lung, 1)
    # Depth outside the thorax (mm) on a ~4 mm grid, interpolated back: layers need no finer.
    f = max(1, int(round(4.0 / h)))
    coarse = sitk.GetImageFromArray(ndi.distance_transform_edt(~thorax[::f, ::f, ::f], sampling=f * h)
                                    .astype(np.float32))
    coarse.SetSpacing((f * h,) * 3)
    depth = sitk.GetArrayFromImage(sitk.Resample(coarse, lung.shape[::-1], sitk.Transform(), sitk.sitkLinear,
                                                 (0.0, 0.0, 0.0), (h,) * 3, coarse.GetDirection(), 1e3))
    depth[thorax] = 0.0
    body = depth <= RIB_LAYER_MM + MUSCLE_LAYER_MM + fat_mm
    fat = body & (depth > RIB_LAYER_MM + MUSCLE_LAYER_MM)
    ring = (depth > 1.0) & (depth <= RIB_LAYER_MM)

    cols, rows = lung.any(axis=1), lung.any(axis=2)          # [z, x], [z, y]
    valid = cols.any(axis=1)
    x_first, x_last = np.argmax(cols, 1), nx - 1 - np.argmax(cols[:, ::-1], 1)
    y_first, y_last = np.argmax(rows, 1), ny - 1 - np.argmax(rows[:, ::-1], 1)
    sigma = 8.0 / h
    mid_x = _per_slice((x_first + x_last) / 2.0, valid, sigma)
    mid_y = _per_slice((y_first + y_last) / 2.0, valid, sigma)
    back_y = _per_slice(y_first.astype(float), valid, sigma)
    half_x = _per_slice((x_last - x_first) / 2.0, valid, sigma)

    z = np.arange(nz, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    phase = 2 * np.pi * (h * (z + 0.45 * (y - mid_y)) + rng.uniform(0, 26.0)) / 26.0
    cartilage = (y > mid_y) & (np.abs(x - mid_x) < 0.45 * half_x)
    sternum = (y > mid_y) & (np.abs(x - mid_x) < 12.0 / h)
    bone = ring & (((np.cos(phase) > 0.45) & ~cartilage) | sternum)
    # Vertebral body (radius 15 mm) behind the mediastinum, with discs every 26 mm.
    vertebra = ((x - mid_x) ** 2 + (y - back_y - 22.0 / h) ** 2 <= (15.0 / h) ** 2) \
        & (np.cos(2 * np.pi * h * z / 26.0) > -0.8)
    bone |= vertebra & ~lung & body
    return Body(body=body, fat=fat, bone=bone)


def grow_tree(root: np.ndarray, points: np.ndarray, radius: float, rng: np.random.Generator,
              min_points: int = 5, min_radius: float = 0.4) -> np.ndarray:
    """Space-filling branching tree from ``root`` into the territory ``points`` ([N, 3], mm).

    Each branch heads for the centroid of its territory and stops part-way there;
    the territory is split in two across its longest (jittered) extent and each half
    gets a child whose radius follows Murray's law (r³ ∝ territory). Branches end
    at the centroid of territories too small to split. Returns segments ``[S, 7]``:
    start (3), end (3), radius (mm), parents before children.
    """
    segments: list[tuple[float, ...]] = []
    stack = [(root, points, radius, 0)]
    while stack:
        start, pts, r, depth = stack.pop()
        centre = pts.mean(0)
        leaf = len(pts) < 2 * min_points or r < min_radius
        end = centre if leaf else start + (0.5 if depth == 0 else 0.6) * (centre - start)
        segments.append((*start, *end, r))
        if leaf:
            continue
        axis = (pts.max(0) - pts.min(0)) * (1.0 + 0.6 * rng.standard_normal(3))
        side = (pts - centre) @ axis > 0
        for part in (pts[side], pts[~side]):
            if len(part) >= min_points:
                stack.append((end, part, r * (len(part) / len(pts)) ** (1 / 3), depth + 1))
    return np.asarray(segments)


def _perpendicular(segments: np.ndarray) -> np.ndarray:
    """Unit vector perpendicular to each segment (to place a bronchus beside its artery)."""
    d = segments[:, 3:6] - segments[:, :3]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    ref = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    n = np.cross(d, ref)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _sample_segments(segments: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points at most ``step`` mm apart (one value per segment) along segments ``[S, 7]``.

    Returns (points [N, 3], segment index [N]); both ends of every segment are included.
    """
    a, b = segments[:, :3], segments[:, 3:6]
    counts = np.ceil(np.linalg.norm(b - a, axis=1) / step).astype(int) + 1
    seg = np.repeat(np.arange(len(segments)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(len(seg)) - first) / np.repeat(np.maximum(counts - 1, 1), counts)
    return a[seg] + t[:, None] * (b[seg] - a[seg]), seg


def draw_tubes(shape: tuple[int, int, int], h: float, segments: np.ndarray,
               wall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, air) volume fractions of tubes on a ``[z, y, x]`` grid of spacing ``h`` mm.

    ``segments`` ``[S, 7]``: start and end (z, y, x mm) and inner radius (mm);
    ``wall`` ``[S]``: wall thickness in mm, 0 for a solid vessel (tissue inside the
    radius), > 0 for a hollow airway (air inside, tissue in the wall). Tubes thinner
    than a voxel (outer radius < h) deposit their volume at samples h/2 apart into the
    nearest voxel, spread by a half-voxel Gaussian (partial volume); thicker ones paint
    the voxels around samples 0.75 radius apart with a one-voxel ramp at their surface
    (the sampling error on the surface is below 0.07 radius).
    """
    tissue = np.zeros(shape, np.float32)
    lumen = np.zeros(shape, np.float32)
    outer = np.zeros(shape, np.float32)
    outer_radius = segments[:, 6] + wall
    thin_seg = outer_radius < h

    points, seg = _sample_segments(segments[thin_seg], np.full(int(thin_seg.sum()), h / 2))
    vox = np.rint(points / h).astype(np.int64)
    keep = np.all((vox >= 0) & (vox < shape), axis=1)
    if keep.any():
        vox, seg = vox[keep], seg[keep]
        lo, hi = np.maximum(vox.min(0) - 2, 0), np.minimum(vox.max(0) + 3, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        box_shape = tuple(int(v) for v in hi - lo)
        flat = np.ravel_multi_index(tuple((vox - lo).T), box_shape)
        r, w = segments[thin_seg][seg, 6], wall[thin_seg][seg]
        lumen_volume = np.where(w > 0, np.pi * r ** 2, 0.0) * (h / 2) / h ** 3
        tissue_volume = np.pi * (r + w) ** 2 * (h / 2) / h ** 3 - lumen_volume
        for target, volume in ((tissue, tissue_volume), (lumen, lumen_volume)):
            deposit = np.bincount(flat, volume, int(np.prod(box_shape))).astype(np.float32).reshape(box_shape)
            target[box] = ndi.gaussian_filter(deposit, 0.5, truncate=2.0, mode="constant")

    thick = segments[~thin_seg]
    points, seg = _sample_segments(thick, np.maximum(h / 2, 0.75 * thick[:, 6]))
    radius = thick[seg, 6].astype(np.float32)
    thickness = wall[~thin_seg][seg].astype(np.float32)
    reach = np.ceil((radius + thickness) / h + 0.5).astype(int)
    for k in np.unique(reach):
        sel = reach == k
        cube = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        offsets = cube[(cube ** 2).sum(1) <= (k + 0.87) ** 2]                 # voxels that can be reached
        centre = points[sel] / h
        around = np.rint(centre).astype(np.int64)[:, None, :] + offsets[None]             # [N, K, 3]
        delta = (around - centre[:, None, :]).astype(np.float32)
        d = h * np.sqrt((delta ** 2).sum(axis=2))                                           # [N, K] mm
        ok = np.all((around >= 0) & (around < shape), axis=2)
        where = np.ravel_multi_index(tuple(around[ok].T), shape)
        r, w = radius[sel][:, None], thickness[sel][:, None]
        inner = np.clip((r - d) / h + 0.5, 0, 1)[ok]
        hollow = np.broadcast_to(w > 0, d.shape)[ok]
        np.maximum.at(tissue.reshape(-1), where[~hollow], inner[~hollow])
        np.maximum.at(lumen.reshape(-1), where[hollow], inner[hollow])
        np.maximum.at(outer.reshape(-1), where[hollow], np.clip((r + w - d) / h + 0.5, 0, 1)[ok][hollow])
    np.clip(lumen, 0, 1, out=lumen)
    tissue = np.minimum(np.maximum(tissue, outer - lumen), 1 - lumen)
    return tissue, lumen


def _hilum(lung_points: np.ndarray, medial_sign: float) -> np.ndarray:
    """Hilum (mm, z/y/x) of one lung: just medial of its inner edge, a little above mid-height."""
    z, y, x = lung_points.T
    return np.array([np.percentile(z, 55), np.median(y),
                     np.percentile(x, 90 if medial_sign > 0 else 10) + medial_sign * 6.0])


def bronchovascular_trees(labels: np.ndarray, h: float, airway: float,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, air) fractions of arteries, veins, airways and trachea, ``[z, y, x]`` float32.

    Arteries and veins are two independent space-filling trees per lung from the
    hilum (root radius 4.5 mm); bronchi run beside the arteries (lumen 0.85 × artery
    radius, drawn while ≥ 0.7 mm) with a wall of (0.3 + 0.9 ``airway``) × lumen
    + 0.3 mm. The trachea (radius 8 mm) joins both main bronchi at the carina.
    """
    trees: list[tuple[np.ndarray, np.ndarray]] = []     # (segments [S, 7], wall [S] mm)
    hila, airway_roots = [], []
    for label, medial in ((RIGHT_LABEL, 1.0), (LEFT_LABEL, -1.0)):
        coords = np.argwhere(labels == label).astype(np.float64) * h
        if len(coords) < 50:
            continue
        hilum = _hilum(coords, medial)
        territories = [coords[rng.choice(len(coords), min(1600, len(coords)), replace=False)] for _ in range(2)]
        arteries = grow_tree(hilum, territories[0], 4.5, rng)
        veins = grow_tree(hilum + [-20.0, -10.0, 0.0], territories[1], 4.5, rng)
        lumen = 0.85 * arteries[:, 6]
        wall = (0.3 + 0.9 * airway) * lumen + 0.3
        shift = (arteries[:, 6] + lumen + wall + 0.5)[:, None] * _perpendicular(arteries)
        bronchi = np.concatenate([arteries[:, :3] + shift, arteries[:, 3:6] + shift, lumen[:, None]], 1)
        big = lumen >= 0.7
        trees += [(arteries, np.zeros(len(arteries))), (veins, np.zeros(len(veins))), (bronchi[big], wall[big])]
        hila.append(hilum)
        airway_roots.append(bronchi[0, :3])
    if len(hila) == 2:
        carina = (hila[0] + hila[1]) / 2 + [12.0, 0.0, 0.0]
        top = carina.copy()
        top[0] = labels.shape[0] * h
        main = np.array([[*carina, *top, 8.0]] + [[*carina, *root, 5.5] for root in airway_roots])
        trees.append((main, np.full(len(main), 1.5 + 0.8 * airway)))
    segments = np.concatenate([s for s, _ in trees])
    walls = np.concatenate([w for _, w in trees])
    return draw_tubes(labels.shape, h, segments, walls)


def centrilobular_emphysema(lung: np.ndarray, h: float, fraction: float, texture: np.ndarray,
                            rng: np.random.Generator) -> np.ndarray:
    """Emphysema weight in [0, 1] (``[z, y, x]`` float32) covering ``fraction`` of the lung.

    Cluster centres are drawn with a density rising towards the apex (upper-zone
    predominance, apex/base ≈ 7); blurring them with a Gaussian whose width grows
    with severity (3 → 7 mm) gives clusters that merge into confluent areas when
    severe. The level set holding exactly ``fraction`` of lung voxels is the
    emphysema boundary, with a soft edge.
    """
    weight = np.zeros(lung.shape, np.float32)
    if fraction <= 0:
        return weight
    lung_flat = np.flatnonzero(lung)
    z = lung_flat // (lung.shape[1] * lung.shape[2])
    zone = 0.15 + ((z - z.min()) / max(1, z.max() - z.min())) ** 2
    sigma_mm = 3.0 + 8.0 * min(fraction, 0.5)
    blob_vox = (4 / 3) * np.pi * (1.5 * sigma_mm / h) ** 3
    n_seeds = int(np.ceil(1.5 * fraction * len(z) / blob_vox)) + 8
    chosen = lung_flat[rng.choice(len(lung_flat), n_seeds, p=zone / zone.sum())]
    seeds = np.bincount(chosen, minlength=lung.size).astype(np.float32).reshape(lung.shape)
    field = ndi.gaussian_filter(seeds, sigma_mm / h, truncate=3.0)
    values = field.ravel()[lung_flat] * np.exp(0.4 * texture.ravel()[lung_flat])   # irregular outlines
    threshold = max(float(np.quantile(values, 1.0 - fraction)), 1e-12)
    weight.ravel()[lung_flat] = np.clip((values / threshold - 1.0) / 0.3 + 0.5, 0.0, 1.0)
    return weight


def paraseptal_bullae(lung: np.ndarray, h: float, fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(air, wall) fractions of sub-pleural bullae filling about ``fraction`` of the lung.

    Bullae (radius 3.5 mm up to 16 mm, larger when more abundant) are centred at
    0.6 × radius inside the pleura, more often in the upper zone, with a 1 mm wall;
    they are added until their air inside the lung reaches ``fraction`` of its volume.
    """
    air = np.zeros(lung.shape, np.float32)
    wall = np.zeros(lung.shape, np.float32)
    if fraction <= 0:
        return air, wall
    r_max = min(16.0, 6.5 + 150.0 * fraction)
    f = max(1, int(round(2.0 / h)))                    # candidate centres on a ~2 mm grid
    coarse = lung[::f, ::f, ::f]
    depth = ndi.distance_transform_edt(coarse, sampling=f * h)
    cz, cy, cx = np.nonzero(coarse & (depth <= 0.6 * r_max + f * h))
    cdepth = depth[cz, cy, cx]
    z_all = np.nonzero(coarse.any(axis=(1, 2)))[0]
    zone = 0.3 + (cz - z_all.min()) / max(1, z_all.max() - z_all.min())
    target = fraction * lung.sum()
    filled = 0.0
    for _ in range(1000):
        if filled >= target:
            break
        r = rng.uniform(3.5, r_max)
        band = np.flatnonzero(np.abs(cdepth - 0.6 * r) <= f * h)
        if not len(band):
            continue
        pick = band[rng.choice(len(band), p=zone[band] / zone[band].sum())]
        centre = np.array([cz[pick], cy[pick], cx[pick]]) * f + rng.uniform(0, f - 1, 3)
        lo = np.maximum(np.floor(centre - (r + 1.0) / h - 1).astype(int), 0)
        hi = np.minimum(np.ceil(centre + (r + 1.0) / h + 2).astype(int), lung.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = h * np.sqrt(sum((g - c) ** 2 for g, c in zip(np.ogrid[box], centre)))
        inner = np.clip((r - 0.5 - d) / h + 0.5, 0, 1) * lung[box]
        outer = np.clip((r + 0.5 - d) / h + 0.5, 0, 1) * lung[box]
        before = float(air[box].sum())
        air[box] = np.maximum(air[box], inner)
        wall[box] = np.maximum(wall[box], outer - inner) * (1 - air[box])
        filled += float(air[box].sum()) - before
    return air, wall


def kernel_noise_gain(sigma_vox: float) -> float:
    """Standard deviation of unit white noise after the 3-D Gaussian filter of ``sigma_vox``."""
    impulse = np.zeros(2 * int(4 * sigma_vox + 0.5) + 1)
    impulse[len(impulse) // 2] = 1.0
    w = ndi.gaussian_filter1d(impulse, sigma_vox)
    return float(w @ w) ** 1.5


def apply_scanner(hu: np.ndarray, body: np.ndarray, h: float, noise_sd_hu: float, kernel_sigma_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Reconstruction kernel (Gaussian PSF of ``kernel_sigma_mm``, at least half a voxel) over HU plus noise.

    Noise is white noise inside ``body`` passed through the same kernel, so it is
    spatially correlated with the kernel's grain, scaled to ``noise_sd_hu`` after
    filtering. Air outside the body stays noise-free (it carries nothing and keeps
    files small). ``hu`` and ``body`` are ``[z, y, x]``; returns float32 HU.
    """
    sigma = max(kernel_sigma_mm / h, 0.5)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_sd_hu / kernel_noise_gain(sigma))
    noise *= body
    noise += hu
    return ndi.gaussian_filter(noise, sigma, truncate=3.0)


def render_subject(latents: SubjectLatents, atlas: sitk.Image, rng: np.random.Generator) -> Rendered:
    """Render the CT and lung mask of one subject on the atlas spacing (see module docstring)."""
    h = atlas.GetSpacing()[0]
    size = 0.93 * float(np.exp(0.06 * latents.body_size))      # the atlas lungs are large (6.5 l)
    inflation = 1.0 + 0.08 * latents.emphysema           # hyperinflation, mostly craniocaudal
    warped = warp_atlas(atlas, (size * inflation, size * inflation, size * inflation ** 2), rng)
    fat_mm = fat_thickness_mm(latents.body_size)
    pad_xy = int(np.ceil((RIB_LAYER_MM + MUSCLE_LAYER_MM + fat_mm) / h)) + 1
    pad = np.array([int(np.ceil(4.0 / h)), pad_xy, pad_xy])                      # z, y, x
    labels = np.pad(sitk.GetArrayFromImage(warped), [(p, p) for p in pad])
    body = build_body(labels > 0, h, fat_mm, rng)

    # Crop to the body plus one voxel of air.
    extent = [np.flatnonzero(body.body.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    lo = np.array([max(int(e[0]) - 1, 0) for e in extent])
    hi = np.array([min(int(e[-1]) + 2, n) for e, n in zip(extent, labels.shape)])
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels = labels[crop]
    lung = labels > 0
    inside, fat, bone = body.body[crop], body.fat[crop], body.bone[crop]
    shape = lung.shape

    texture = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 2.5 / h, truncate=3.0)
    texture /= max(float(texture.std()), 1e-6)
    hu = np.full(shape, AIR_HU, np.float32)
    hu[inside] = SOFT_TISSUE_HU + 10.0 * texture[inside]
    hu[fat] = FAT_HU + 10.0 * texture[fat]
    hu[bone] = BONE_HU

    # Parenchyma: denser towards the back (gravity), less dense with hyperinflation.
    ys = np.nonzero(lung.any(axis=(0, 2)))[0]
    y_norm = (np.arange(shape[1], dtype=np.float32) - ys.min()) / max(1, ys.max() - ys.min())
    paren = (PARENCHYMA_HU - 30.0 * latents.emphysema + 40.0 * (0.5 - y_norm))[None, :, None] + 14.0 * texture
    cle = centrilobular_emphysema(lung, h, latents.cle_target, texture, rng)
    bulla_air, bulla_wall = paraseptal_bullae(lung, h, latents.pse_target, rng)
    paren += cle * (EMPHYSEMA_HU - paren)
    paren = (1 - bulla_air - bulla_wall) * paren + bulla_air * AIR_HU + bulla_wall * SOFT_TISSUE_HU
    hu[lung] = paren[lung]

    tissue, air = bronchovascular_trees(labels, h, latents.airway, rng)
    tissue *= lung                                        # mediastinal vessels melt into soft tissue
    hu += tissue * (BLOOD_HU - hu) + air * (AIR_HU - hu)
    hu = apply_scanner(hu, inside, h, latents.noise_sd_hu, latents.kernel_sigma_mm, rng)

    start = lo - pad                                                           # z, y, x in warped grid
    origin = warped.TransformContinuousIndexToPhysicalPoint(start[::-1].astype(float).tolist())
    image = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    mask = sitk.GetImageFromArray(labels)
    for im in (image, mask):
        im.SetSpacing((h,) * 3)
        im.SetOrigin(origin)
        im.SetDirection(warped.GetDirection())
    n_lung = max(int(lung.sum()), 1)
    return Rendered(image=image, mask=mask, lung_volume_l=n_lung * h ** 3 / 1e6,
                    cle_fraction=float(cle[lung].sum() / n_lung),
                    pse_fraction=float(bulla_air[lung].sum() / n_lung))
