"""STL-digits from real-format MNIST/STL10 files, and the offline stand-in."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from copd_ifm.cli import main
from copd_ifm.errors import UserError
from natural_images import digits as dg
from natural_images.feature_datasets import FeatureFolder


def _write_mnist(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST idx files exactly as torchvision reads them from ROOT/MNIST/raw."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, len(images), 28, 28)
                                                      + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, len(labels))
                                                      + labels.astype(np.uint8).tobytes())


def _write_stl(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """STL10 binaries: uint8 images stored channel-major, column-major ([N, 3, W, H]); labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
    (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())


@pytest.fixture
def raw_root(tmp_path):
    """A tiny STL10 + MNIST: the digit images are solid 28×28 squares of value 255, photos stay below 200."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    for split, n_stl, n_mnist in (("train", 6, 12), ("test", 4, 8)):
        photos = rng.integers(0, 200, size=(n_stl, 96, 96, 3), dtype=np.uint8)
        photos[:, :10, :20] = (10, 120, 190)               # an asymmetric mark to catch transposed reads
        _write_stl(root, split, photos, rng.integers(0, 10, n_stl))
        _write_mnist(root, split, np.full((n_mnist, 28, 28), 255, np.uint8), rng.integers(0, 10, n_mnist))
    return root


def test_stl_digits_reads_the_real_formats_and_pastes_nine_copies(raw_root):
    stl = np.fromfile(raw_root / "stl10_binary" / "train_X.bin", np.uint8).reshape(-1, 3, 96, 96)
    photos = stl.transpose(0, 3, 2, 1)
    stl_labels = np.fromfile(raw_root / "stl10_binary" / "train_y.bin", np.uint8).astype(np.int64) - 1
    mnist_labels = np.frombuffer((raw_root / "MNIST/raw/train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    ds = dg.STLDigits(raw_root, "train", seed=3)
    assert len(ds) == 6 and ds.schema.name == "stl-digits" and ds.features == ("digit", "object")
    assert (photos[:, :10, :20] == (10, 120, 190)).all()
    assert torch.equal(ds.targets[:, 1], torch.as_tensor(stl_labels))
    assert torch.equal(ds.targets[:, 0], torch.as_tensor(mnist_labels[ds.digit_index].astype(np.int64)))
    for i in range(len(ds)):
        img, labels = ds[i]
        img = np.asarray(img)
        white = (img == 255).all(-1)
        assert white.sum() == 9 * 28 * 28                              # nine whole copies, none overlapping
        for r in range(3):
            for c in range(3):
                cell = white[32 * r:32 * r + 32, 32 * c:32 * c + 32]
                ys, xs = np.nonzero(cell)
                assert cell.sum() == 28 * 28 and ys.max() - ys.min() == 27 and xs.max() - xs.min() == 27
        assert (img[~white] == photos[i][~white]).all()              # the photo is untouched elsewhere
        assert labels.tolist() == ds.targets[i].tolist()


def test_digit_blending_is_alpha_over_white():
    photo = np.full((96, 96, 3), 100, np.uint8)
    digit = np.zeros((28, 28), np.uint8)
    digit[10, 10] = 51                                               # α = 0.2
    out = dg.compose(photo, digit, np.random.default_rng(0))
    assert sorted(np.unique(out).tolist()) == [100, 131]             # 0.8·100 + 0.2·255 = 131
    assert (out == 131).all(-1).sum() == 9


def test_missing_files_are_one_line_user_errors(tmp_path, raw_root):
    with pytest.raises(UserError, match="stl10_binary"):
        dg.STLDigits(tmp_path / "nothing", "train")
    (raw_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(UserError, match="MNIST"):
        dg.STLDigits(raw_root, "test")
    with pytest.raises(UserError, match="--data-root"):
        dg.digits_dataset(dg.DigitsSpec(source="stl"), "train")


def test_cli_make_digits_stl_writes_a_readable_folder(tmp_path, raw_root):
    out = tmp_path / "stl_digits"
    assert main(["vision", "make-digits", "--source", "stl", "--data-root", str(raw_root), "--out", str(out),
                 "--size", "48", "--workers", "1"]) == 0
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["schema"]["name"] == "stl-digits" and meta["splits"] == {"train": 6, "test": 4}
    assert (out / "contact_sheet.png").is_file()
    live = dg.STLDigits(raw_root, "test", size=48)
    disk = FeatureFolder(out, "test")
    assert torch.equal(disk.targets, live.targets)
    assert np.array_equal(np.asarray(disk[2][0]), np.asarray(live.image(2)))
    assert disk[2][0].size == (48, 48)


def test_standin_is_built_from_scikit_learn_and_named_as_a_standin():
    tr, te = dg.DigitsStandin("train", 40), dg.DigitsStandin("test", 20)
    assert tr.schema.name == te.schema.name == "digits-standin"
    assert tr.schema.class_names["object"][0] == "china-strip0"
    train_digits, test_digits = dg.standin_digits()["train"][0], dg.standin_digits()["test"][0]
    assert len(train_digits) + len(test_digits) == 1797
    assert (torch.bincount(tr.targets[:, 1], minlength=10) == 4).all()
    assert set(tr.targets[:, 0].tolist()) <= set(range(10))
    img = np.asarray(tr.image(7))
    assert img.shape == (96, 96, 3)
    assert np.array_equal(img, np.asarray(dg.DigitsStandin("train", 40).image(7)))
    assert not np.array_equal(img, np.asarray(dg.DigitsStandin("train", 40, seed=1).image(7)))


def test_standin_object_label_is_the_photo_strip(monkeypatch):
    """With photos whose five strips are flat, distinct colours, every background is its label's colour."""
    shades = np.arange(10) * 20 + 10
    photos = tuple(np.repeat(np.repeat(shades[5 * p:5 * p + 5], dg.STRIP_PX)[None, :, None], 427, 0)
                   .repeat(3, 2).astype(np.uint8) for p in range(2))
    monkeypatch.setattr(dg, "standin_photos", lambda: photos)
    ds = dg.DigitsStandin("train", 30)
    for i in range(30):
        obj = int(ds.targets[i, 1])
        assert (ds.photo(i, ds.rng(i)) == shades[obj]).all()
