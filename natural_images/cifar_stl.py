"""The md5-checked torchvision datasets: CIFAR-10/100 (also from pickles with bytes keys) and STL10.

torchvision checks every file's md5 on each open; ``verify=False`` (``data.verify``) keeps only the
existence check, for a deliberately re-encoded copy, and :func:`failed_checksums` names the files that fail.
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets import cifar as tv_cifar
from torchvision.datasets.utils import check_integrity

Transform = Callable[[Any], Any]


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


def _unverified(cls: type) -> type:
    """``cls`` (a torchvision CIFAR/STL10 class) with every md5 set to None: torchvision then checks existence only."""
    attrs: dict[str, Any] = {"train_list": [[name, None] for name, _ in cls.train_list],
                             "test_list": [[name, None] for name, _ in cls.test_list]}
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    return type(f"Unverified{cls.__name__}", (cls,), attrs)


def _checked(cls: type, verify: bool) -> type:
    return cls if verify else _unverified(cls)


def cifar10(root: Path, split: str, transform: Transform | None, download: bool, verify: bool = True) -> Dataset:
    return _checked(CIFAR10, verify)(root, train=split != "test", transform=transform, download=download)


def cifar100(root: Path, split: str, transform: Transform | None, download: bool, verify: bool = True) -> Dataset:
    return _checked(CIFAR100, verify)(root, train=split != "test", transform=transform, download=download)


def stl10(root: Path, split: str, transform: Transform | None, download: bool, verify: bool = True) -> Dataset:
    name = {"pretrain": "train+unlabeled", "train": "train", "test": "test"}[split]
    return _checked(tvd.STL10, verify)(root, split=name, transform=transform, download=download)


TORCHVISION_CHECKED = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}


def failed_checksums(dataset: str, root: Path) -> list[Path]:
    """The files of ``dataset`` (cifar10 | cifar100 | stl10) under ``root`` that are missing or fail their md5."""
    cls = TORCHVISION_CHECKED[dataset]
    listed = [name for name, _ in cls.train_list + cls.test_list]
    sums = [md5 for _, md5 in cls.train_list + cls.test_list]
    if hasattr(cls, "meta"):
        listed.append(cls.meta["filename"])
        sums.append(cls.meta["md5"])
    paths = [root / cls.base_folder / name for name in listed]
    return [path for path, md5 in zip(paths, sums) if not check_integrity(str(path), md5)]
