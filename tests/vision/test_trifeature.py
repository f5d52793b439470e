"""Trifeature generator: label semantics, determinism, split, disk format and CLI."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from copd_ifm.cli import main
from copd_ifm.errors import UserError
from natural_images import trifeature as tf
from natural_images.feature_datasets import FeatureFolder

SPEC = tf.TrifeatureSpec(size=32, per_combination=3, test_per_combination=1)


def test_exactly_1000_combinations_with_stated_labels():
    for split, per in (("train", 2), ("test", 1)):
        ds = tf.Trifeature(SPEC, split)
        assert len(ds) == 1000 * per
        assert ds.features == ("color", "shape", "texture")
        rows, counts = torch.unique(ds.targets, dim=0, return_counts=True)
        assert rows.shape == (1000, 3) and bool((counts == per).all())
        assert {tuple(r) for r in rows.tolist()} == set(itertools.product(range(10), repeat=3))
    for c in range(1000):
        assert tf.combination_index(*tf.combination_labels(c)) == c
    ds = tf.Trifeature(SPEC, "train")
    for j in (0, 1, 517, 1999):
        c, _ = ds.locate(j)
        _, labels = ds[j]
        assert labels.dtype == torch.long and tuple(labels.tolist()) == tf.combination_labels(c)
    assert tf.SCHEMA.class_names["color"] == ("red", "green", "blue", "yellow", "pink", "cyan", "purple", "ocean",
                                              "orange", "white")


def test_listed_colours_and_grey_background_are_exact():
    spec = replace(SPEC, size=64)
    nuis = tf.image_nuisance(spec, 0, 0)
    for color, rgb in enumerate(tf.COLORS.values()):
        img = tf.render(color, 1, 0, nuis, spec)                      # solid square
        alpha = tf.coverage(1, 0, nuis, spec)
        assert (img[alpha == 1] == np.rint(np.array(rgb) * 255)).all()
        assert (img[alpha == 0] == 128).all()
        side = 1.36 * spec.template_px / 2                            # the square's side, px
        assert (side - 2) ** 2 <= (alpha == 1).sum() <= side**2 <= (alpha > 0).sum() <= (side + 2) ** 2


def _alpha_from_pixels(img: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    """Coverage recovered from the pixels alone, through the channel farthest from grey."""
    ch = int(np.argmax(np.abs(np.array(rgb) - 0.5)))
    return (img[..., ch] / 255.0 - 0.5) / (rgb[ch] - 0.5)


@pytest.mark.parametrize("combination,repeat", [(0, 0), (437, 1), (999, 2)])
def test_recolouring_changes_only_colour(combination, repeat):
    """Same nuisance, other colour: the same pixels are painted, to the same extent, in the new colour only."""
    color, shape, texture = tf.combination_labels(combination)
    nuis = tf.image_nuisance(SPEC, combination, repeat)
    a = tf.render(color, shape, texture, nuis, SPEC)
    for other in (c for c in range(10) if c != color):
        b = tf.render(other, shape, texture, nuis, SPEC)
        painted_a = (a != 128).any(-1)
        assert ((b != 128).any(-1) == painted_a).all()
        rgb_a, rgb_b = list(tf.COLORS.values())[color], list(tf.COLORS.values())[other]
        np.testing.assert_allclose(_alpha_from_pixels(a, rgb_a), _alpha_from_pixels(b, rgb_b), atol=2 / 255 / 0.2)


def test_retexturing_stays_inside_the_shape_and_each_texture_differs():
    nuis = tf.image_nuisance(SPEC, 123, 0)
    solid = tf.coverage(2, 0, nuis, SPEC)
    patterns = []
    for t in range(10):
        cov = tf.coverage(2, t, nuis, SPEC)
        assert (cov <= solid + 1e-7).all()                            # texture only removes paint inside the shape
        assert cov.sum() > 0.15 * solid.sum()                         # and leaves the shape visible
        patterns.append(cov)
    for i, j in itertools.combinations(range(10), 2):
        assert np.abs(patterns[i] - patterns[j]).sum() > 5, (tf.TEXTURES[i], tf.TEXTURES[j])


def test_reshaping_keeps_the_texture_where_shapes_overlap():
    """Without supersampling coverage is binary; on the overlap of two shapes the texture pixels agree."""
    spec = replace(SPEC, size=64, supersample=1)
    nuis = tf.image_nuisance(spec, 5, 0)
    for texture in (1, 3, 5, 8):
        covs = [tf.coverage(s, texture, nuis, spec) for s in range(10)]
        masks = [tf.coverage(s, 0, nuis, spec) for s in range(10)]
        for i, j in itertools.combinations(range(10), 2):
            both = (masks[i] == 1) & (masks[j] == 1)
            assert both.sum() > 0 and (covs[i][both] == covs[j][both]).all()
    masks = [tf.coverage(s, 0, nuis, spec) for s in range(10)]
    for i, j in itertools.combinations(range(10), 2):
        assert (masks[i] != masks[j]).sum() > 20, (tf.SHAPES[i], tf.SHAPES[j])


def test_geometry_stays_on_canvas_and_follows_the_spec():
    spec = replace(SPEC, size=64)
    assert spec.template_px == pytest.approx(64 * 128 / 224) and spec.period_px == 4.0
    assert tf.TrifeatureSpec(size=224).period_px == 10.0
    for poly in itertools.chain.from_iterable(tf.SHAPE_POLYGONS.values()):
        assert np.hypot(*poly.T).max() <= 1.0 + 1e-9
    ds = tf.Trifeature(spec, "train")
    for j in range(0, 2000, 97):
        n = ds.nuisance(j)
        assert -45 <= n.angle < 45 and -45 <= n.texture_angle < 45
        assert all(spec.template_px / 2 <= x <= 64 - spec.template_px / 2 for x in n.center)
        img = np.asarray(ds.image(j))
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == 128).all()


def test_images_are_deterministic_and_independent_of_dataset_size():
    a = tf.Trifeature(SPEC, "train")
    b = tf.Trifeature(replace(SPEC, per_combination=6, test_per_combination=2), "train")
    for c, k in ((0, 0), (311, 1), (999, 1)):
        img_a = np.asarray(a.image(c * 2 + k))
        assert np.array_equal(img_a, np.asarray(a.image(c * 2 + k)))
        assert np.array_equal(img_a, np.asarray(b.image(c * 4 + k)))
    other_seed = tf.Trifeature(replace(SPEC, seed=1), "train")
    assert not np.array_equal(np.asarray(a.image(5)), np.asarray(other_seed.image(5)))


def test_split_is_disjoint_and_covers_every_repeat():
    train, test = tf.Trifeature(SPEC, "train"), tf.Trifeature(SPEC, "test")
    tr = {train.locate(j) for j in range(len(train))}
    te = {test.locate(j) for j in range(len(test))}
    assert not tr & te
    assert tr | te == set(itertools.product(range(1000), range(3)))
    assert {k for _, k in te} == {2}
    for j in (0, 400, 999):
        c, _ = test.locate(j)
        assert not np.array_equal(np.asarray(test.image(j)), np.asarray(train.image(2 * c)))
    with pytest.raises(UserError, match="per_combination"):
        tf.Trifeature(tf.TrifeatureSpec(per_combination=1, test_per_combination=1))


def test_cli_writes_pngs_labels_and_contact_sheet_and_resumes(tmp_path):
    out = tmp_path / "tri"
    argv = ["vision", "make-trifeature", "--out", str(out), "--size", "16", "--per-combination", "2",
            "--test-per-combination", "1", "--workers", "1"]
    assert main(argv) == 0
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["splits"] == {"train": 1000, "test": 1000}
    assert meta["construction"]["size"] == 16 and meta["schema"]["features"] == ["color", "shape", "texture"]
    assert (out / "contact_sheet.png").stat().st_size > 1000
    spec = tf.TrifeatureSpec(size=16, per_combination=2, test_per_combination=1)
    for split in ("train", "test"):
        disk, live = FeatureFolder(out, split), tf.Trifeature(spec, split)
        assert torch.equal(disk.targets, live.targets)
        for j in (0, 555, 999):
            assert np.array_equal(np.asarray(disk[j][0]), np.asarray(live.image(j)))
    victim = out / "images" / "test" / "c010_k001.png"
    keep = out / "images" / "test" / "c011_k001.png"
    victim.unlink()
    mtime = keep.stat().st_mtime_ns
    assert main(argv) == 0
    assert victim.exists() and keep.stat().st_mtime_ns == mtime


def test_reading_a_folder_that_is_not_a_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="make-trifeature"):
        FeatureFolder(tmp_path)
