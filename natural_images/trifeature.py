"""Trifeature (Hermann & Lampinen, NeurIPS 2020): 10 colours × 10 shapes × 10 textures = 1000 combinations.

Each image shows one textured shape on a grey (0.5) background. Labels are a
LongTensor ``[3]`` ``(color, shape, texture)`` (see
:mod:`natural_images.feature_datasets` for the common interface and disk format).

Construction (values the paper gives, and our choices where it is silent):

* Canvas ``size``² px, default 128 (the IFM paper's resolution). Geometry is
  Hermann & Lampinen's 224-px canvas scaled to ``size``: the shape template is
  a square of side ``T = 128/224·size`` px; every shape polygon lies inside the
  template's inscribed disc, so any rotation stays inside the template.
* Shape rotation uniform in [−45°, 45°); template centre uniform in
  ``[T/2, size − T/2]²`` (the template always lies wholly on the canvas).
* Texture: a binary pattern of period ``p`` px with its own rotation uniform in
  [−45°, 45°) and phase uniform in ``[0, p)²``. ``p`` defaults to H&L's 10 px at
  224 scaled to ``size`` (5.7 px at 128) but is never below 4 px so that textures
  stay resolvable at 32–64 px (``texture_period`` overrides it).
  ``noise`` is Bernoulli(½) cells of side ``p/4`` from the image's own seed.
* A pixel is the colour where shape ∧ texture, grey elsewhere, anti-aliased by
  averaging ``supersample``² sub-pixel samples (coverage ``α``:
  ``pixel = 128 + α·(rint(255·colour) − 128)`` in 8-bit units).

As ``data.dataset: trifeature`` (pretraining and read-out) the dataset is read
from ``DATA_ROOT/trifeature`` (``copd-ifm vision make-trifeature`` writes it
there by default); pretraining uses the train split.

Determinism and split: image ``(combination c, repeat k)`` is drawn from
``numpy.random.default_rng([seed, c, k])`` alone, so any image can be rendered
on the fly by index and does not depend on how many are generated. With
``per_combination = n`` and ``test_per_combination = m``, repeats ``k < n − m``
are the training set and ``n − m ≤ k < n`` the test set (default 10 and 2:
8000 train, 2000 test images, every combination in both). Combination index
``c = 100·color + 10·shape + texture``; split-local item ``j`` is combination
``j // n_split``, repeat ``j % n_split`` (+ ``n − m`` for test).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from copd_ifm.errors import UserError
from natural_images.datasets import DatasetSpec, register_dataset
from natural_images.feature_datasets import (FeatureFolder, FeatureSchema, MultiFeatureDataset, contact_sheet,
                                             folder_image_size, write_feature_folder)

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
    "pink": (1.0, 0.4, 1.0), "cyan": (0.0, 1.0, 1.0), "purple": (0.3, 0.0, 0.5), "ocean": (0.1, 0.4, 0.5),
    "orange": (1.0, 0.6, 0.0), "white": (1.0, 1.0, 1.0),
}
SHAPES = ("triangle", "square", "plus", "circle", "tee", "rhombus", "pentagon", "star", "fivesquare", "trapezoid")
TEXTURES = ("solid", "stripes", "grid", "hexgrid", "dots", "noise", "triangles", "zigzags", "rain", "pluses")
FEATURES = ("color", "shape", "texture")
SCHEMA = FeatureSchema("trifeature", FEATURES,
                       {"color": tuple(COLORS), "shape": SHAPES, "texture": TEXTURES})
N_COMBINATIONS = len(COLORS) * len(SHAPES) * len(TEXTURES)
GREY_8BIT = 128.0  # 0.5 in 8 bit (255·0.5 = 127.5 rounds to 128)
REFERENCE_CANVAS, REFERENCE_TEMPLATE, REFERENCE_PERIOD = 224, 128, 10.0
MIN_PERIOD = 4.0
NOISE_CELLS = 64  # side of the repeating table of noise cells


@dataclass(frozen=True)
class TrifeatureSpec:
    """Everything that determines the dataset's pixels."""

    size: int = 128
    seed: int = 0
    per_combination: int = 10
    test_per_combination: int = 2
    texture_period: float | None = None
    supersample: int = 2

    def validate(self) -> None:
        if self.size < 16:
            raise UserError(f"trifeature size must be >= 16 px, got {self.size}")
        if self.seed < 0:
            raise UserError(f"trifeature seed must be >= 0, got {self.seed}")
        if not 1 <= self.test_per_combination < self.per_combination:
            raise UserError(f"trifeature needs 1 <= test_per_combination < per_combination, got "
                            f"{self.test_per_combination} and {self.per_combination} (use --per-combination >= 2)")
        if self.supersample < 1:
            raise UserError(f"trifeature supersample must be >= 1, got {self.supersample}")
        if self.texture_period is not None and self.texture_period < 2:
            raise UserError(f"trifeature texture_period must be >= 2 px, got {self.texture_period}")

    @property
    def template_px(self) -> float:
        """Side of the shape template in px (128 of 224 on the reference canvas)."""
        return self.size * REFERENCE_TEMPLATE / REFERENCE_CANVAS

    @property
    def period_px(self) -> float:
        """Texture period in px."""
        if self.texture_period is not None:
            return float(self.texture_period)
        return max(REFERENCE_PERIOD * self.size / REFERENCE_CANVAS, MIN_PERIOD)

    @property
    def train_per_combination(self) -> int:
        return self.per_combination - self.test_per_combination


@dataclass(frozen=True)
class Nuisance:
    """The per-image random draws other than the three labelled features."""

    angle: float                   # shape rotation, degrees, [−45, 45)
    center: tuple[float, float]    # template centre (x, y), px
    texture_angle: float           # texture rotation, degrees, [−45, 45)
    phase: tuple[float, float]     # texture phase (along its two axes), px, [0, p)
    noise_seed: int                # seed of the ``noise`` texture's cells


def sample_nuisance(spec: TrifeatureSpec, rng: np.random.Generator) -> Nuisance:
    half = spec.template_px / 2
    p = spec.period_px
    return Nuisance(angle=float(rng.uniform(-45, 45)),
                    center=(float(rng.uniform(half, spec.size - half)), float(rng.uniform(half, spec.size - half))),
                    texture_angle=float(rng.uniform(-45, 45)),
                    phase=(float(rng.uniform(0, p)), float(rng.uniform(0, p))),
                    noise_seed=int(rng.integers(2**31)))


def image_nuisance(spec: TrifeatureSpec, combination: int, repeat: int) -> Nuisance:
    """The nuisance of image ``(combination, repeat)``: a function of ``(seed, combination, repeat)`` only."""
    return sample_nuisance(spec, np.random.default_rng([spec.seed, combination, repeat]))


def combination_labels(combination: int) -> tuple[int, int, int]:
    """``c`` → ``(color, shape, texture)`` with ``c = 100·color + 10·shape + texture``."""
    return combination // 100, (combination // 10) % 10, combination % 10


def combination_index(color: int, shape: int, texture: int) -> int:
    return 100 * color + 10 * shape + texture


# --- shapes: polygons in template units (unit disc, y up) ------------------------------------


def _regular(n: int, radius: float, start_deg: float = 90.0) -> np.ndarray:
    t = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    t = np.deg2rad(90.0 + 180.0 * np.arange(2 * points) / points)
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


# Each shape is a list of polygons (fivesquare has five); all vertices have radius ≤ 1.
SHAPE_POLYGONS: dict[str, list[np.ndarray]] = {
    "triangle": [_regular(3, 0.98)],
    "square": [_rect(-0.68, -0.68, 0.68, 0.68)],
    "plus": [np.array([(-0.25, 0.9), (0.25, 0.9), (0.25, 0.25), (0.9, 0.25), (0.9, -0.25), (0.25, -0.25),
                       (0.25, -0.9), (-0.25, -0.9), (-0.25, -0.25), (-0.9, -0.25), (-0.9, 0.25), (-0.25, 0.25)])],
    "circle": [_regular(96, 0.85)],
    "tee": [np.array([(-0.7, 0.7), (0.7, 0.7), (0.7, 0.3), (0.2, 0.3), (0.2, -0.7), (-0.2, -0.7), (-0.2, 0.3),
                      (-0.7, 0.3)])],
    "rhombus": [np.array([(0.0, 0.95), (0.55, 0.0), (0.0, -0.95), (-0.55, 0.0)])],
    "pentagon": [_regular(5, 0.92)],
    "star": [_star(5, 0.98, 0.42)],
    "fivesquare": [_rect(cx - 0.2, cy - 0.2, cx + 0.2, cy + 0.2)
                   for cx, cy in ((0, 0), (-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))],
    "trapezoid": [np.array([(-0.9, -0.42), (0.9, -0.42), (0.45, 0.42), (-0.45, 0.42)])],
}


def shape_mask(shape: int, nuisance: Nuisance, spec: TrifeatureSpec) -> np.ndarray:
    """Boolean ``[size·ss, size·ss]`` mask of the rotated, placed shape on the supersampled canvas."""
    ss = spec.supersample
    n = spec.size * ss
    t = math.radians(nuisance.angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in SHAPE_POLYGONS[SHAPES[shape]]:
        xy = (poly @ rot.T) * (spec.template_px / 2)
        # template y is up, image rows go down; PIL puts pixel centres on integers, we on half-integers
        px = (nuisance.center[0] + xy[:, 0]) * ss - 0.5
        py = (nuisance.center[1] - xy[:, 1]) * ss - 0.5
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=1)
    return np.asarray(canvas, dtype=bool)


# --- textures: boolean functions of texture coordinates (a, b) in periods ---------------------


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _hexgrid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Honeycomb lines: the Voronoi edges of a unit triangular lattice, where the two nearest sites are equidistant."""
    h = math.sqrt(3) / 2
    j = b / h
    i = a - 0.5 * j
    i0, j0 = np.floor(i), np.floor(j)
    d = []
    for di in (0, 1):
        for dj in (0, 1):
            si, sj = i0 + di, j0 + dj  # the nearest two sites are corners of the lattice rhombus holding (a, b)
            d.append(np.hypot(a - (si + 0.5 * sj), b - h * sj))
    d2 = np.sort(np.stack(d), axis=0)
    return d2[1] - d2[0] < 0.22


def _texture(texture: int, a: np.ndarray, b: np.ndarray, noise_seed: int) -> np.ndarray:
    """Boolean texture pattern at texture coordinates ``a``, ``b`` (same shape, in periods)."""
    name = TEXTURES[texture]
    fa, fb = _frac(a), _frac(b)
    if name == "solid":
        return np.ones(a.shape, bool)
    if name == "stripes":
        return fa < 0.5
    if name == "grid":
        return (fa < 0.25) | (fb < 0.25)
    if name == "hexgrid":
        return _hexgrid(a, b)
    if name == "dots":
        return (fa - 0.5) ** 2 + (fb - 0.5) ** 2 < 0.3**2
    if name == "noise":
        table = np.random.default_rng(noise_seed).random((NOISE_CELLS, NOISE_CELLS)) < 0.5
        return table[np.floor(4 * a).astype(np.int64) % NOISE_CELLS, np.floor(4 * b).astype(np.int64) % NOISE_CELLS]
    if name == "triangles":  # one upward isosceles triangle per cell
        return (fb > 0.12) & (fb < 0.88) & (np.abs(fa - 0.5) < 0.42 * (0.88 - fb) / 0.76)
    if name == "zigzags":
        return _frac(b + np.abs(fa - 0.5)) < 0.35
    if name == "rain":  # short slanted dashes, alternate rows shifted by half a period
        ga = _frac(a + 0.5 * np.floor(b))
        return (np.abs(fb - 0.5) < 0.32) & (np.abs((ga - 0.5) - 0.3 * (fb - 0.5)) < 0.12)
    if name == "pluses":
        ca, cb = np.abs(fa - 0.5), np.abs(fb - 0.5)
        return ((ca < 0.11) & (cb < 0.36)) | ((cb < 0.11) & (ca < 0.36))
    raise ValueError(f"unknown texture index {texture}")


@lru_cache(maxsize=8)
def _centres(size: int, ss: int) -> np.ndarray:
    """Sub-pixel centres along one axis of the supersampled canvas, in output px, ``[size·ss]``."""
    return ((np.arange(size * ss) + 0.5) / ss).astype(np.float64)


def coverage(shape: int, texture: int, nuisance: Nuisance, spec: TrifeatureSpec) -> np.ndarray:
    """Share of each pixel covered by the textured shape, float32 ``[size, size]`` in [0, 1]."""
    ss, size = spec.supersample, spec.size
    mask = shape_mask(shape, nuisance, spec)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    out = np.zeros((size * ss, size * ss), bool)
    if rows.size:
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        axis = _centres(size, ss) - size / 2
        dx, dy = np.meshgrid(axis[c0:c1], axis[r0:r1])
        t = math.radians(nuisance.texture_angle)
        p = spec.period_px
        a = (math.cos(t) * dx + math.sin(t) * dy + nuisance.phase[0]) / p
        b = (-math.sin(t) * dx + math.cos(t) * dy + nuisance.phase[1]) / p
        out[r0:r1, c0:c1] = mask[r0:r1, c0:c1] & _texture(texture, a, b, nuisance.noise_seed)
    return out.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)


def composite(alpha: np.ndarray, color: int) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` from coverage ``α`` ``[H, W]``: ``grey + α·(colour − grey)`` in 8-bit units.

    The colour and the grey are rounded to 8 bit first (grey 0.5 → 128), so a fully
    covered pixel is exactly ``rint(255·colour)`` and an uncovered one exactly 128.
    """
    rgb = np.rint(np.asarray(COLORS[SCHEMA.class_names["color"][color]]) * 255).astype(np.float32)
    img = GREY_8BIT + alpha[..., None] * (rgb - GREY_8BIT)
    return np.rint(img).astype(np.uint8)


def render(color: int, shape: int, texture: int, nuisance: Nuisance, spec: TrifeatureSpec) -> np.ndarray:
    """One Trifeature image, uint8 RGB ``[size, size, 3]``."""
    return composite(coverage(shape, texture, nuisance, spec), color)


class Trifeature(MultiFeatureDataset):
    """Trifeature generated on the fly (deterministic from ``spec``); ``split`` is ``"train"`` or ``"test"``.

    ``dataset[j]`` → ``(image, LongTensor([color, shape, texture]))``; the
    image is PIL RGB ``size × size``, or ``transform(image)``.
    """

    def __init__(self, spec: TrifeatureSpec = TrifeatureSpec(), split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        spec.validate()
        if split not in ("train", "test"):
            raise UserError(f"trifeature split must be 'train' or 'test', got {split!r}")
        self.spec, self.split, self.transform, self.schema = spec, split, transform, SCHEMA
        self.per = spec.train_per_combination if split == "train" else spec.test_per_combination
        self.first_repeat = 0 if split == "train" else spec.train_per_combination
        combos = np.repeat(np.arange(N_COMBINATIONS), self.per)
        self.targets = torch.as_tensor(np.stack([combos // 100, (combos // 10) % 10, combos % 10], 1))

    def locate(self, index: int) -> tuple[int, int]:
        """Split-local item ``index`` → ``(combination, repeat)``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index // self.per, self.first_repeat + index % self.per

    def nuisance(self, index: int) -> Nuisance:
        return image_nuisance(self.spec, *self.locate(index))

    def image(self, index: int) -> Image.Image:
        c, k = self.locate(index)
        return Image.fromarray(render(*combination_labels(c), image_nuisance(self.spec, c, k), self.spec))

    def image_name(self, index: int) -> str:
        c, k = self.locate(index)
        return f"c{c:03d}_k{k:03d}"

    def extra_columns(self) -> dict[str, np.ndarray]:
        rows = [(*self.locate(i), asdict(self.nuisance(i))) for i in range(len(self))]
        return {"combination": np.array([r[0] for r in rows]), "repeat": np.array([r[1] for r in rows]),
                "angle": np.array([r[2]["angle"] for r in rows]),
                "center_x": np.array([r[2]["center"][0] for r in rows]),
                "center_y": np.array([r[2]["center"][1] for r in rows]),
                "texture_angle": np.array([r[2]["texture_angle"] for r in rows]),
                "phase_a": np.array([r[2]["phase"][0] for r in rows]),
                "phase_b": np.array([r[2]["phase"][1] for r in rows])}


def make_trifeature(out: str | Path, spec: TrifeatureSpec = TrifeatureSpec(), workers: int = 1) -> Path:
    """Write Trifeature (train and test) to ``out`` as PNGs + ``labels.csv`` + ``dataset.json`` + contact sheet."""
    spec.validate()
    splits = {s: Trifeature(spec, s) for s in ("train", "test")}
    construction: dict[str, Any] = {"generator": "natural_images.trifeature", **asdict(spec),
                                    "template_px": spec.template_px, "period_px": spec.period_px}
    write_feature_folder(splits, out, construction, workers=workers)
    contact_sheet(splits["train"], Path(out) / "contact_sheet.png", seed=spec.seed)
    return Path(out)


def _open_folder(root: Path, split: str, transform: Callable[[Image.Image], Any] | None,
                 download: bool) -> FeatureFolder:
    """``data.dataset: trifeature``: the folder ``ROOT/trifeature`` written by :func:`make_trifeature`."""
    return FeatureFolder(root / "trifeature", "test" if split == "test" else "train", transform)


register_dataset("trifeature", DatasetSpec(_open_folder, "trifeature", 128, downloadable=False, in_memory=True,
                                           probe=folder_image_size))
