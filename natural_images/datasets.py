"""Vision datasets through torchvision's own readers, plus a registry other modules plug into.

Every dataset lives under one root (``data.root``, default
``{data_home}/vision``) in its official on-disk layout:

=============  ===============================  ==========================================
name           folder under the root            splits (pretrain / train / test)
=============  ===============================  ==========================================
cifar10        ``cifar-10-batches-py``          train / train / test
cifar100       ``cifar-100-python``             train / train / test
stl10          ``stl10_binary``                 train+unlabeled / train / test
tinyimagenet   ``tiny-imagenet-200``            train / train / val (official annotations
                                                file, or class sub-folders)
imagenet100    ``imagenet`` (``train/``,        train / train / val, restricted to the
               ``val/`` with class folders)     CMC 100-class list ``data/imagenet100.txt``
=============  ===============================  ==========================================

Items are ``(PIL image, label)``; a dataset may instead return several labels
per image (``(image, labels)`` with a ``features`` attribute naming the label
columns, e.g. Trifeature's colour/shape/texture). Such datasets register
themselves with :func:`register_dataset` when their module is imported; the
modules in :data:`PLUGIN_MODULES` are imported on first lookup of an unknown name.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets import cifar as tv_cifar
from torchvision.datasets.utils import download_and_extract_archive

from copd_ifm.errors import UserError
from natural_images.config import DataConfig

Split = Literal["pretrain", "train", "test"]
Transform = Callable[[Any], Any]
Builder = Callable[[Path, str, Transform | None, bool], Dataset]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The hard-negative SimCLR code normalises CIFAR10, CIFAR100 and STL10 alike with these.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

IMAGENET100_LIST = Path(__file__).with_name("data") / "imagenet100.txt"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
PLUGIN_MODULES = ("natural_images.trifeature", "natural_images.digits")


@dataclass(frozen=True)
class DatasetSpec:
    """How to open one dataset.

    ``build(root, split, transform, download)`` returns a torch Dataset of
    ``(image, label)`` or ``(image, labels)`` for ``split`` in pretrain/train/test.
    ``image_size`` is the native resolution (px) used when the config leaves
    crop/eval sizes unset; evaluation resizes the short side to
    ``eval_size · eval_resize`` and centre-crops ``eval_size`` (ImageNet: 256/224).
    """

    build: Builder
    folder: str
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_resize: float = 1.0
    downloadable: bool = True


def _text(value: Any) -> Any:
    """bytes → str (latin-1, as torchvision decodes CIFAR's Python 2 pickles); anything else unchanged."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python batch or meta file with str keys and labels, whether written with str or bytes
    keys (``b"data"``, as some re-exports write; torchvision alone raises KeyError on those)."""
    import pickle

    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    return {_text(k): [_text(x) for x in v] if isinstance(v, list) else v for k, v in entry.items()}


class _CifarReader:
    """torchvision's CIFAR reader (same files, md5 checks and download) over :func:`_read_cifar_pickle`."""

    def __init__(self, root: Path, train: bool, transform: Transform | None, download: bool) -> None:
        tvd.VisionDataset.__init__(self, str(root), transform=transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        folder = Path(self.root) / self.base_folder
        names = self.train_list if train else self.test_list
        batches = [_read_cifar_pickle(folder / name) for name, _ in names]
        self.data = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [t for b in batches for t in b.get("labels", b.get("fine_labels", []))]
        meta = folder / self.meta["filename"]
        if not tv_cifar.check_integrity(str(meta), self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted")
        self.classes = _read_cifar_pickle(meta)[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10(_CifarReader, tvd.CIFAR10):
    """CIFAR-10, as torchvision reads it, also from pickles with bytes keys."""


class CIFAR100(_CifarReader, tvd.CIFAR100):
    """CIFAR-100, as torchvision reads it, also from pickles with bytes keys."""


def _cifar10(root: Path, split: str, transform: Transform | None, download: bool) -> Dataset:
    return CIFAR10(root, train=split != "test", transform=transform, download=download)


def _cifar100(root: Path, split: str, transform: Transform | None, download: bool) -> Dataset:
    return CIFAR100(root, train=split != "test", transform=transform, download=download)


def _stl10(root: Path, split: str, transform: Transform | None, download: bool) -> Dataset:
    name = {"pretrain": "train+unlabeled", "train": "train", "test": "test"}[split]
    return tvd.STL10(root, split=name, transform=transform, download=download)


class TinyImageNetVal(Dataset):
    """tinyImageNet's official validation layout: ``val/images/*.JPEG`` + ``val/val_annotations.txt``.

    Each annotation line is ``file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1``;
    labels follow the training folder's ``class_to_idx``.
    """

    def __init__(self, folder: Path, class_to_idx: dict[str, int], transform: Transform | None = None) -> None:
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        ann = folder / "val_annotations.txt"
        for line_no, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_to_idx:
                raise UserError(f"{ann} line {line_no}: expected 'file<TAB>wnid...' with a wnid of train/, "
                                f"got {line!r}")
            self.samples.append((folder / "images" / fields[0], class_to_idx[fields[1]]))
        self.targets = [t for _, t in self.samples]
        self.classes = sorted(class_to_idx, key=class_to_idx.__getitem__)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), target


def _tinyimagenet(root: Path, split: str, transform: Transform | None, download: bool) -> Dataset:
    base = root / "tiny-imagenet-200"
    if download and not base.is_dir():
        download_and_extract_archive(TINY_IMAGENET_URL, str(root))
    train = tvd.ImageFolder(str(base / "train"), transform=transform)
    if split != "test":
        return train
    val = base / "val"
    if (val / "val_annotations.txt").is_file():
        return TinyImageNetVal(val, train.class_to_idx, transform)
    test = tvd.ImageFolder(str(val), transform=transform)
    if test.classes != train.classes:
        raise UserError(f"{val}: class folders differ from {base / 'train'}; use the official val layout "
                        f"(val/images + val_annotations.txt) or the same 200 wnid folders")
    return test


def imagenet100_classes() -> list[str]:
    """The 100 ImageNet wnids of the CMC subset (``data/imagenet100.txt``), in file order."""
    return [w.strip() for w in IMAGENET100_LIST.read_text(encoding="utf-8").splitlines() if w.strip()]


class ImageFolderSubset(tvd.ImageFolder):
    """An ImageFolder that keeps only the class folders named in ``classes`` (labels in sorted wnid order)."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Transform | None = None) -> None:
        self._wanted = sorted(classes)
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        present = {entry.name for entry in os.scandir(directory) if entry.is_dir()}
        missing = [c for c in self._wanted if c not in present]
        if missing:
            raise UserError(f"{directory}: {len(missing)} of the {len(self._wanted)} listed class folders are "
                            f"missing (first: {missing[0]}); point --data-root at a full ImageNet copy")
        return list(self._wanted), {c: i for i, c in enumerate(self._wanted)}


def _imagenet100(root: Path, split: str, transform: Transform | None, download: bool) -> Dataset:
    folder = root / "imagenet" / ("val" if split == "test" else "train")
    if not folder.is_dir():
        raise UserError(f"imagenet100: no {folder}; the ImageNet folder needs train/ and val/ with one "
                        f"sub-folder per wnid (PyTorch's ImageNet example layout)")
    return ImageFolderSubset(folder, imagenet100_classes(), transform)


_REGISTRY: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(_cifar10, "cifar-10-batches-py", 32, CIFAR_MEAN, CIFAR_STD),
    "cifar100": DatasetSpec(_cifar100, "cifar-100-python", 32, CIFAR_MEAN, CIFAR_STD),
    "stl10": DatasetSpec(_stl10, "stl10_binary", 96, CIFAR_MEAN, CIFAR_STD),
    "tinyimagenet": DatasetSpec(_tinyimagenet, "tiny-imagenet-200", 64),
    "imagenet100": DatasetSpec(_imagenet100, "imagenet", 224, eval_resize=256 / 224, downloadable=False),
}


def register_dataset(name: str, spec: DatasetSpec) -> None:
    """Make ``name`` usable as ``data.dataset`` / ``--dataset`` (plug-in modules call this on import)."""
    _REGISTRY[name] = spec


def _load_plugins() -> None:
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def available_datasets() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"dataset {name!r} is unknown (available: {', '.join(available_datasets())})")
    return _REGISTRY[name]


def build_dataset(data: DataConfig, split: Split, transform: Transform | None = None) -> Dataset:
    """Open split ``split`` of ``data.dataset`` under ``data.root``; a missing dataset is a one-line UserError."""
    spec = dataset_spec(data.dataset)
    root = data.root_path
    folder = root / spec.folder
    if data.download and not spec.downloadable:
        raise UserError(f"{data.dataset} cannot be downloaded automatically; place it in {folder}")
    if not data.download and not folder.exists():
        hint = "pass --download (needs internet)" if spec.downloadable else "it cannot be downloaded automatically"
        raise UserError(f"{data.dataset}: {folder} not found; put the dataset there (or point --data-root at "
                        f"its parent folder), or {hint}")
    try:
        dataset = spec.build(root, split, transform, data.download)
    except (URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{data.dataset}: download failed ({reason}); connect to the internet and run again, or "
                        f"put the dataset in {folder} and drop --download") from None
    except (RuntimeError, FileNotFoundError, KeyError) as exc:
        raise UserError(f"{data.dataset}: {folder} is incomplete or corrupted ({exc}); delete it and pass "
                        f"--download (needs internet), or restore the files") from exc
    n = len(dataset)
    if data.limit and data.limit < n:
        # Evenly spaced, so folder-sorted datasets keep every class.
        return Subset(dataset, torch.linspace(0, n - 1, data.limit).round().long().unique().tolist())
    return dataset


def label_names(dataset: Dataset) -> list[str]:
    """Names of the label columns: the (underlying) dataset's ``features`` attribute, else ``["class"]``."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return list(getattr(base, "features", None) or ["class"])


def as_label_matrix(labels: Any) -> Tensor:
    """A collated label batch → ``[B, F]`` int64.

    Accepts a ``[B]`` tensor (one label), a ``[B, F]`` tensor, or a list of ``F`` ``[B]`` tensors.
    """
    if isinstance(labels, (list, tuple)):
        return torch.stack([torch.as_tensor(col) for col in labels], dim=1).long()
    labels = torch.as_tensor(labels)
    return (labels.unsqueeze(1) if labels.dim() == 1 else labels).long()


def image_sizes(data: DataConfig) -> tuple[int, int]:
    """Training crop and evaluation size (px): the configured ones, else the dataset's native resolution."""
    native = dataset_spec(data.dataset).image_size
    return data.crop_size or native, data.eval_size or native
