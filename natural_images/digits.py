"""STL-digits (two features: MNIST digit and STL10 object) and its offline stand-in, ``digits-standin``.

Items are ``(image, LongTensor([digit, object]))`` (interface and disk format:
:mod:`natural_images.feature_datasets`). Both variants share one composition;
only the sources differ.

Composition (the IFM paper gives "copies of one random MNIST digit on an STL10
image"; the numbers are our choices):

* Canvas 96 × 96 px (STL10's native size); the finished image is resized to
  ``size`` (PIL bilinear with antialiasing) when ``size != 96``.
* One digit image per item, drawn uniformly from the digit source's same split.
* 9 copies of that digit on a 3 × 3 grid of 32-px cells; each copy is 28 × 28 px
  (MNIST's native size, the digit itself ≈ 20 px) placed at the cell's corner
  plus an offset uniform in {0, …, 4} px per axis, drawn per copy.
* Blending: white strokes over the photo, ``pixel = (1 − α)·photo + α·255`` with
  ``α = digit intensity / 255`` (copies never overlap: 28 + 4 ≤ 32).
* Every random draw of item ``i`` comes from ``numpy.random.default_rng([seed, split, i])``
  (the digit choice from ``default_rng([seed, split])`` for the whole split),
  so items are deterministic and can be composed on the fly.

As ``data.dataset: stl-digits`` or ``digits-standin`` (pretraining and
read-out) the dataset is read from ``DATA_ROOT/<name>``, written there by
``copd-ifm vision make-digits`` (default ``--out``); pretraining uses the train split.

``stl-digits``: photos and ``object`` labels are STL10's labelled ``train``
(5000) and ``test`` (8000) images, digits are MNIST's ``train``/``test`` images,
both read with torchvision from ``ROOT/stl10_binary/`` and ``ROOT/MNIST/raw/``
(``download=False``; the STL10 files are checked for presence and size, not by
MD5, which would hash 2.6 GB at every start).

``digits-standin`` (offline; **not** STL-digits): built only from files that
ship inside scikit-learn. Digits are ``sklearn.datasets.load_digits`` (1797
8 × 8 images, 0–16) upscaled bilinearly to 20 × 20, scaled to 0–255 and
centred in a 28 × 28 field like MNIST; split 75/25 by
``train_test_split(stratify=digit, random_state=0)``. Photos are square crops of
``load_sample_images`` (china.jpg, flower.jpg, 427 × 640 px each): the ``object``
label is one of 10 regions, photo × one of five 128-px-wide vertical strips;
a crop has a side uniform in {96, …, 128} px at a uniform position inside its
strip and is resized to 96 px. Objects are balanced (item ``i`` has object
``i mod 10``); ``n_train``/``n_test`` items per split. Train and test crops come
from the same two photos, so the stand-in's object label measures "which part of
which photo", a much weaker test than STL10's object classes.
"""
from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from copd_ifm.errors import UserError
from natural_images.datasets import DatasetSpec, register_dataset
from natural_images.feature_datasets import (FeatureFolder, FeatureSchema, MultiFeatureDataset, contact_sheet,
                                             folder_image_size, write_feature_folder)

CANVAS, GRID, DIGIT_PX, JITTER_PX = 96, 3, 28, 4
CELL = CANVAS // GRID
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
DIGITS = tuple(str(d) for d in range(10))
PHOTOS, STRIPS, STRIP_PX = ("china.jpg", "flower.jpg"), 5, 128
STANDIN_OBJECTS = tuple(f"{p.split('.')[0]}-strip{s}" for p in PHOTOS for s in range(STRIPS))
STL_SCHEMA = FeatureSchema("stl-digits", ("digit", "object"), {"digit": DIGITS, "object": STL10_CLASSES})
STANDIN_SCHEMA = FeatureSchema("digits-standin", ("digit", "object"), {"digit": DIGITS, "object": STANDIN_OBJECTS})
SOURCES = ("stl", "standin")
_SPLIT_CODE = {"train": 0, "test": 1}


def compose(photo: np.ndarray, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste ``GRID²`` white copies of ``digit`` (uint8 ``[28, 28]``) on ``photo`` (uint8 ``[96, 96, 3]``).

    Returns a new uint8 ``[96, 96, 3]``; offsets are drawn from ``rng``, one pair per copy.
    """
    out = photo.astype(np.float32)
    alpha = digit.astype(np.float32)[..., None] / 255.0
    offsets = rng.integers(0, JITTER_PX + 1, size=(GRID * GRID, 2))
    for n, (dy, dx) in enumerate(offsets):
        y, x = (n // GRID) * CELL + dy, (n % GRID) * CELL + dx
        patch = out[y:y + DIGIT_PX, x:x + DIGIT_PX]
        out[y:y + DIGIT_PX, x:x + DIGIT_PX] = (1 - alpha) * patch + alpha * 255.0
    return np.rint(out).astype(np.uint8)


def _check_split(name: str, split: str) -> None:
    if split not in _SPLIT_CODE:
        raise UserError(f"{name} split must be 'train' or 'test', got {split!r}")


class _DigitsOnPhotos(MultiFeatureDataset):
    """Shared composition; subclasses provide the digit images and :meth:`photo`."""

    def __init__(self, schema: FeatureSchema, split: str, digits: np.ndarray, digit_labels: np.ndarray,
                 objects: np.ndarray, seed: int, size: int,
                 transform: Callable[[Image.Image], Any] | None) -> None:
        _check_split(schema.name, split)
        if size < 16:
            raise UserError(f"{schema.name} size must be >= 16 px, got {size}")
        self.schema, self.split, self.seed, self.size, self.transform = schema, split, seed, size, transform
        self.digits = digits
        self.digit_index = np.random.default_rng([seed, _SPLIT_CODE[split]]).integers(len(digits), size=len(objects))
        self.targets = torch.as_tensor(np.stack([digit_labels[self.digit_index], objects], 1).astype(np.int64))

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])

    @abstractmethod
    def photo(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The background of item ``index``, uint8 ``[96, 96, 3]`` (may draw from ``rng``)."""

    def image(self, index: int) -> Image.Image:
        rng = self.rng(index)
        img = Image.fromarray(compose(self.photo(index, rng), self.digits[self.digit_index[index]], rng))
        return img if self.size == CANVAS else img.resize((self.size, self.size), Image.BILINEAR)

    def extra_columns(self) -> dict[str, np.ndarray]:
        return {"digit_source_index": self.digit_index}


class _STL10Files(torchvision.datasets.STL10):
    """torchvision's STL10 reader, checking that the files exist instead of hashing them."""

    def _check_integrity(self) -> bool:
        needed = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}[self.split]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in needed)


def _load_stl(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """STL10 labelled images ``[N, 96, 96, 3]`` uint8 and labels ``[N]`` (0–9) from ``root/stl10_binary``."""
    folder = root / "stl10_binary"
    try:
        stl = _STL10Files(str(root), split=split, download=False)
    except RuntimeError:
        raise UserError(f"{folder}: STL10 {split}_X.bin/{split}_y.bin not found; put the extracted "
                        "stl10_binary folder under --data-root or use --source standin") from None
    except ValueError as exc:
        raise UserError(f"{folder}: STL10 {split} files are truncated or not STL10 binaries ({exc})") from None
    if len(stl.labels) != len(stl.data):
        raise UserError(f"{folder}: {split}_X.bin has {len(stl.data)} images but {split}_y.bin "
                        f"{len(stl.labels)} labels; re-extract STL10")
    return np.ascontiguousarray(stl.data.transpose(0, 2, 3, 1)), np.asarray(stl.labels, np.int64)


def _load_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``[M, 28, 28]`` uint8 and labels ``[M]`` from ``root/MNIST/raw``."""
    try:
        mnist = torchvision.datasets.MNIST(str(root), train=split == "train", download=False)
    except RuntimeError:
        raise UserError(f"{root / 'MNIST' / 'raw'}: MNIST idx files not found; put them under "
                        "--data-root/MNIST/raw or use --source standin") from None
    return mnist.data.numpy(), mnist.targets.numpy().astype(np.int64)


class STLDigits(_DigitsOnPhotos):
    """STL-digits from the real STL10 and MNIST files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", seed: int = 0, size: int = CANVAS,
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        _check_split(STL_SCHEMA.name, split)
        self.photos, objects = _load_stl(Path(root), split)
        digits, digit_labels = _load_mnist(Path(root), split)
        super().__init__(STL_SCHEMA, split, digits, digit_labels, objects, seed, size, transform)

    def photo(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return self.photos[index]


@lru_cache(maxsize=1)
def standin_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8 × 8 digits as MNIST-like uint8 ``[M, 28, 28]`` images with labels, per split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    big = np.stack([np.asarray(Image.fromarray((img * 255 / 16).astype(np.float32)).resize((20, 20), Image.BILINEAR))
                    for img in raw.images])
    field = np.zeros((len(big), DIGIT_PX, DIGIT_PX), np.uint8)
    field[:, 4:24, 4:24] = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(field)), test_size=0.25, stratify=raw.target,
                                           random_state=0)
    return {"train": (field[idx_train], raw.target[idx_train].astype(np.int64)),
            "test": (field[idx_test], raw.target[idx_test].astype(np.int64))}


@lru_cache(maxsize=1)
def standin_photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg), uint8 ``[427, 640, 3]`` each."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    by_name = {Path(f).name: img for f, img in zip(data.filenames, data.images)}
    missing = [p for p in PHOTOS if p not in by_name]
    if missing:
        raise UserError(f"scikit-learn's sample images lack {missing[0]}; reinstall scikit-learn")
    return tuple(by_name[p] for p in PHOTOS)


class DigitsStandin(_DigitsOnPhotos):
    """The offline stand-in: scikit-learn digits on crops of scikit-learn's sample photos (not STL-digits)."""

    def __init__(self, split: str = "train", n: int | None = None, seed: int = 0, size: int = CANVAS,
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        n = (5000 if split == "train" else 2000) if n is None else n
        if n < 1:
            raise UserError(f"digits-standin needs at least 1 item per split, got {n}")
        _check_split(STANDIN_SCHEMA.name, split)
        digits, digit_labels = standin_digits()[split]
        super().__init__(STANDIN_SCHEMA, split, digits, digit_labels, np.arange(n) % len(STANDIN_OBJECTS),
                         seed, size, transform)

    def photo(self, index: int, rng: np.random.Generator) -> np.ndarray:
        obj = int(self.targets[index, 1])
        photo = standin_photos()[obj // STRIPS]
        side = int(rng.integers(CANVAS, STRIP_PX + 1))
        x0 = (obj % STRIPS) * STRIP_PX + int(rng.integers(0, STRIP_PX - side + 1))
        y0 = int(rng.integers(0, photo.shape[0] - side + 1))
        crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side])
        return np.asarray(crop.resize((CANVAS, CANVAS), Image.BILINEAR))


@dataclass(frozen=True)
class DigitsSpec:
    """What :func:`make_digits` builds: ``source`` ``stl`` (needs ``data_root``) or ``standin``."""

    source: str = "standin"
    data_root: str | None = None
    size: int = CANVAS
    seed: int = 0
    n_train: int = 5000            # stand-in only; STL-digits has STL10's 5000 / 8000
    n_test: int = 2000

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise UserError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "stl" and not self.data_root:
            raise UserError("--source stl needs --data-root DIR holding stl10_binary/ and MNIST/raw/")


def digits_dataset(spec: DigitsSpec, split: str,
                   transform: Callable[[Image.Image], Any] | None = None) -> _DigitsOnPhotos:
    """The STL-digits or stand-in split described by ``spec``, composed on the fly."""
    spec.validate()
    if spec.source == "stl":
        return STLDigits(spec.data_root or "", split, spec.seed, spec.size, transform)
    n = spec.n_train if split == "train" else spec.n_test
    return DigitsStandin(split, n, spec.seed, spec.size, transform)


def make_digits(out: str | Path, spec: DigitsSpec = DigitsSpec(), workers: int = 1) -> Path:
    """Write the train and test splits to ``out`` (PNGs + ``labels.csv`` + ``dataset.json`` + contact sheet)."""
    splits = {s: digits_dataset(spec, s) for s in ("train", "test")}
    name = splits["train"].schema.name
    construction: dict[str, Any] = {"generator": "natural_images.digits", "name": name, **asdict(spec),
                                    "canvas": CANVAS, "grid": GRID, "digit_px": DIGIT_PX, "jitter_px": JITTER_PX}
    write_feature_folder(splits, out, construction, workers=workers)
    contact_sheet(splits["train"], Path(out) / "contact_sheet.png", seed=spec.seed)
    return Path(out)


def _folder_opener(name: str) -> Callable[[Path, str, Callable[[Image.Image], Any] | None, bool], FeatureFolder]:
    def open_folder(root: Path, split: str, transform: Callable[[Image.Image], Any] | None,
                    download: bool) -> FeatureFolder:
        return FeatureFolder(root / name, "test" if split == "test" else "train", transform)
    return open_folder


for _schema in (STL_SCHEMA, STANDIN_SCHEMA):
    register_dataset(_schema.name, DatasetSpec(_folder_opener(_schema.name), _schema.name, CANVAS, downloadable=False,
                                               in_memory=True, probe=folder_image_size))
