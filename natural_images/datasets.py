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
folder         the root itself: ``train/<class>/*`` train / train / val; any PNG/JPEG images
               and ``val/<class>/*``            (torchvision ImageFolder)
=============  ===============================  ==========================================

One ``--data-root`` rule for every dataset (:func:`dataset_root`): the root may be the folder holding the
dataset's folder, or that folder itself (``--data-root ~/data/cifar-10-batches-py``, ``.../trifeature``).

``data.classes`` (``--classes FILE``: one class folder name per line) keeps
only the listed classes of ``folder`` and ``imagenet100`` (replacing the CMC
list). CIFAR and STL10 files are md5-checked by torchvision on every open;
``data.verify: false`` checks only that they exist (a deliberately re-encoded copy).

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
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.error import URLError

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_and_extract_archive

from copd_ifm import files
from copd_ifm.errors import UserError
from natural_images.cifar_stl import TORCHVISION_CHECKED, cifar10, cifar100, failed_checksums, stl10
from natural_images.config import DataConfig

Split = Literal["pretrain", "train", "test"]
Transform = Callable[[Any], Any]
Builder = Callable[..., Dataset]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The hard-negative SimCLR code normalises CIFAR10, CIFAR100 and STL10 alike with these.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

IMAGENET100_LIST = files.package_path("natural_images", "data", "imagenet100.txt")
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
PLUGIN_MODULES = ("natural_images.trifeature", "natural_images.digits")
FOLDER_MAX_PX = 224             # a folder's native size: its first image's short side, at most this


@dataclass(frozen=True)
class DatasetSpec:
    """How to open one dataset.

    ``build(root, split, transform, download, **options)`` returns a torch Dataset of
    ``(image, label)`` or ``(image, labels)`` for ``split`` in pretrain/train/test;
    ``options`` are the :class:`DataConfig` fields named in ``options``.
    ``image_size`` is the native resolution (px) used when the config leaves
    crop/eval sizes unset, unless ``probe(ROOT/folder)`` reads it from the data;
    evaluation resizes the short side to ``eval_size · eval_resize`` and
    centre-crops ``eval_size`` (ImageNet: 256/224). ``in_memory``: the whole
    dataset fits in memory as a uint8 tensor (candidates for on-device augmentation).
    """

    build: Builder
    folder: str
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_resize: float = 1.0
    downloadable: bool = True
    in_memory: bool = False
    options: tuple[str, ...] = ()
    probe: Callable[[Path], int | None] | None = None


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


def read_class_list(path: str | Path) -> list[str]:
    """Class folder names, one per line (blank lines and ``#`` comments skipped), in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--classes {path}: no such file; give a text file with one class folder name per line")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if not names or duplicate:
        raise UserError(f"--classes {path}: " + (f"{duplicate!r} is listed twice" if duplicate else "lists no class")
                        + "; give one class folder name per line")
    return names


def imagenet100_classes() -> list[str]:
    """The 100 ImageNet wnids of the CMC subset (``data/imagenet100.txt``), in file order."""
    return read_class_list(IMAGENET100_LIST)


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
                            f"missing (first: {missing[0]}); every listed class needs a folder in train/ and val/ "
                            f"(fix --data-root or the class list)")
        return list(self._wanted), {c: i for i, c in enumerate(self._wanted)}


def _imagenet100(root: Path, split: str, transform: Transform | None, download: bool,
                 classes: str | None = None) -> Dataset:
    folder = root / "imagenet" / ("val" if split == "test" else "train")
    if not folder.is_dir():
        raise UserError(f"imagenet100: no {folder}; the ImageNet folder needs train/ and val/ with one "
                        f"sub-folder per wnid (PyTorch's ImageNet example layout)")
    wanted = read_class_list(files.expand_home(classes)) if classes else imagenet100_classes()
    return ImageFolderSubset(folder, wanted, transform)


def _image_folder(root: Path, split: str, transform: Transform | None, download: bool,
                  classes: str | None = None) -> Dataset:
    """``--dataset folder``: ``ROOT/train/<class>/*`` (pretrain, train) or ``ROOT/val/<class>/*`` (test).

    Labels are the sorted class names of ``train/`` (or of the ``classes`` file), in both splits.
    """
    folder = root / ("val" if split == "test" else "train")
    if not folder.is_dir():
        raise UserError(f"folder: no {folder}; --data-root DIR needs DIR/train/<class>/* and DIR/val/<class>/* "
                        f"(PNG or JPEG images)")
    if classes:
        wanted = read_class_list(files.expand_home(classes))
    else:
        wanted = sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())
    return ImageFolderSubset(folder, wanted, transform)


def _folder_size(root: Path) -> int | None:
    """Short side (px, at most :data:`FOLDER_MAX_PX`) of the first image under ``root/train/<class>/``."""
    train = root / "train"
    if not train.is_dir():
        return None
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMG_EXTENSIONS:
                with Image.open(path) as img:
                    return min(img.size + (FOLDER_MAX_PX,))
    return None


_TORCHVISION_FILES = dict(in_memory=True, options=("verify",))
_REGISTRY: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(cifar10, "cifar-10-batches-py", 32, CIFAR_MEAN, CIFAR_STD, **_TORCHVISION_FILES),
    "cifar100": DatasetSpec(cifar100, "cifar-100-python", 32, CIFAR_MEAN, CIFAR_STD, **_TORCHVISION_FILES),
    "stl10": DatasetSpec(stl10, "stl10_binary", 96, CIFAR_MEAN, CIFAR_STD, **_TORCHVISION_FILES),
    "tinyimagenet": DatasetSpec(_tinyimagenet, "tiny-imagenet-200", 64),
    "imagenet100": DatasetSpec(_imagenet100, "imagenet", 224, eval_resize=256 / 224, downloadable=False,
                               options=("classes",)),
    "folder": DatasetSpec(_image_folder, "", FOLDER_MAX_PX, downloadable=False, options=("classes",),
                          probe=_folder_size),
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
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(available_datasets())})")
    return _REGISTRY[name]


def dataset_root(dataset: str, root: Path) -> Path:
    """The folder holding ``dataset``'s own folder: ``root``, or its parent when ``root`` *is* that folder
    (named as in the table above and not holding a folder of that name itself). ``folder``: always ``root``."""
    name = dataset_spec(dataset).folder
    return root.parent if name and root.name == name and not (root / name).exists() else root


def build_dataset(data: DataConfig, split: Split, transform: Transform | None = None) -> Dataset:
    """Open split ``split`` of ``data.dataset`` under ``data.root``; a missing dataset is a one-line UserError."""
    spec = dataset_spec(data.dataset)
    root = dataset_root(data.dataset, data.root_path)
    folder = root / spec.folder
    if data.classes and "classes" not in spec.options:
        raise UserError(f"data.classes (--classes) applies to folder and imagenet100, not {data.dataset}")
    if data.download and not spec.downloadable:
        raise UserError(f"{data.dataset} cannot be downloaded automatically; place it in {folder}")
    if not data.download and not folder.exists():
        hint = "pass --download (needs internet)" if spec.downloadable else "it cannot be downloaded automatically"
        raise UserError(f"{data.dataset}: {folder} not found; put the dataset there (or point --data-root at "
                        f"the dataset's folder or its parent), or {hint}")
    options = {name: getattr(data, name) for name in spec.options}
    try:
        dataset = spec.build(root, split, transform, data.download, **options)
    except (URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{data.dataset}: download failed ({reason}); connect to the internet and run again, or "
                        f"put the dataset in {folder} and drop --download") from None
    except (RuntimeError, FileNotFoundError, KeyError) as exc:
        raise UserError(_damaged_message(data, folder, exc)) from exc
    n = len(dataset)  # type: ignore[arg-type]
    if data.limit and data.limit < n:
        # Evenly spaced, so folder-sorted datasets keep every class.
        return Subset(dataset, torch.linspace(0, n - 1, data.limit).round().long().unique().tolist())
    return dataset


def _damaged_message(data: DataConfig, folder: Path, exc: Exception) -> str:
    """One line naming the first file that fails its check and the ways on that leave the user's files alone."""
    keep = "your files were left untouched"
    if data.dataset in TORCHVISION_CHECKED:
        failed = failed_checksums(data.dataset, dataset_root(data.dataset, data.root_path))
        if failed:
            state = "is missing" if not failed[0].exists() else "fails torchvision's md5 check"
            more = f" ({len(failed) - 1} more file(s) too)" if len(failed) > 1 else ""
            return (f"{data.dataset}: {failed[0]} {state}{more}; {keep}. Restore that file from the official "
                    f"archive, or pass --download with another --data-root, or, for a deliberately re-encoded "
                    f"copy, skip the md5 check with --set data.verify=false")
    return (f"{data.dataset}: {folder} is incomplete or unreadable ({exc}); {keep}. Restore the files, or pass "
            f"--download with another --data-root")


def label_names(dataset: Dataset) -> list[str]:
    """Names of the label columns: the (underlying) dataset's ``features`` attribute, else ``["class"]``."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return list(getattr(base, "features", None) or ["class"])


def dataset_labels(dataset: Dataset) -> Tensor:
    """All labels ``[N, L]`` int64 of ``dataset`` without decoding images where the dataset lists them
    (``targets``, or torchvision STL10's ``labels``; through a ``Subset``'s indices); else item by item."""
    base, index = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else (dataset, None)
    listed = getattr(base, "targets", None)
    if listed is None:
        listed = getattr(base, "labels", None)
    if listed is None:
        return as_label_matrix(torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))]))
    labels = as_label_matrix(torch.as_tensor(listed))
    return labels if index is None else labels[index]


def as_label_matrix(labels: Any) -> Tensor:
    """A collated label batch → ``[B, F]`` int64.

    Accepts a ``[B]`` tensor (one label), a ``[B, F]`` tensor, or a list of ``F`` ``[B]`` tensors.
    """
    if isinstance(labels, (list, tuple)):
        return torch.stack([torch.as_tensor(col) for col in labels], dim=1).long()
    labels = torch.as_tensor(labels)
    return (labels.unsqueeze(1) if labels.dim() == 1 else labels).long()


def native_size(data: DataConfig) -> int:
    """The dataset's own resolution (px): read from its folder where the spec can, else the spec's."""
    spec = dataset_spec(data.dataset)
    folder = dataset_root(data.dataset, data.root_path) / spec.folder
    probed = spec.probe(folder) if spec.probe and not (data.crop_size and data.eval_size) else None
    return probed or spec.image_size


def image_sizes(data: DataConfig) -> tuple[int, int]:
    """Training crop and evaluation size (px): the configured ones, else the dataset's native resolution."""
    native = native_size(data)
    return data.crop_size or native, data.eval_size or native
