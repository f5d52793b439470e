"""Images labelled with several features at once (Trifeature, STL-digits): one base class, one on-disk format.

Every dataset here returns ``(image, labels)``: ``image`` is a PIL RGB image, or
``transform(image)`` when a transform is given; ``labels`` is a LongTensor
``[F]``, one integer class per feature in ``dataset.schema.features`` order
(Trifeature: ``("color", "shape", "texture")``; STL-digits and its stand-in:
``("digit", "object")``). ``dataset.targets`` holds all labels, LongTensor ``[N, F]``.

On-disk format (written by :func:`write_feature_folder`, read by :class:`FeatureFolder`)::

    DIR/dataset.json          {"format": 1, "schema": {name, features, class_names}, "splits": {split: n},
                               "construction": {...}}   # every parameter needed to regenerate
    DIR/labels.csv            file, split, <one integer column per feature>, <feature>_name columns, extra columns
    DIR/images/<split>/<name>.png   RGB, 8 bit
    DIR/contact_sheet.png     one row per feature value (see :func:`contact_sheet`)

``labels.csv`` and ``dataset.json`` are written last and atomically; images
already on disk are kept, so an interrupted ``make-*`` command resumes.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from copd_ifm.files import atomic_write, atomic_write_text, save_figure  # noqa: E402
from copd_ifm.errors import UserError  # noqa: E402

FORMAT_VERSION = 1
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FeatureSchema:
    """Names of a dataset's features and of each feature's classes (class ``i`` is ``class_names[f][i]``)."""

    name: str
    features: tuple[str, ...]
    class_names: dict[str, tuple[str, ...]] = field(hash=False)

    @property
    def num_classes(self) -> tuple[int, ...]:
        return tuple(len(self.class_names[f]) for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "features": list(self.features),
                "class_names": {f: list(self.class_names[f]) for f in self.features}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(name=str(data["name"]), features=tuple(data["features"]),
                   class_names={f: tuple(data["class_names"][f]) for f in data["features"]})


class MultiFeatureDataset(Dataset, ABC):
    """Base class: subclasses set ``schema``, ``split``, ``targets`` (LongTensor ``[N, F]``), define :meth:`image`."""

    schema: FeatureSchema
    split: str
    targets: torch.Tensor
    transform: Callable[[Image.Image], Any] | None = None

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """The RGB image of item ``index`` (no transform)."""

    def image_name(self, index: int) -> str:
        """File stem used when the dataset is written to disk."""
        return f"{index:06d}"

    def extra_columns(self) -> dict[str, np.ndarray]:
        """Per-item columns (length ``N``) written to ``labels.csv`` beside the labels (nuisance parameters)."""
        return {}

    @property
    def features(self) -> tuple[str, ...]:
        return self.schema.features

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        img = self.image(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


class FeatureFolder(MultiFeatureDataset):
    """A dataset written by :func:`write_feature_folder` (``DIR/dataset.json`` + ``labels.csv`` + PNGs)."""

    def __init__(self, root: str | Path, split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        meta = read_folder_meta(self.root)
        self.schema = FeatureSchema.from_dict(meta["schema"])
        self.construction: dict[str, Any] = meta.get("construction", {})
        if split not in meta["splits"]:
            raise UserError(f"{self.root / 'dataset.json'}: no split {split!r} (has {', '.join(meta['splits'])})")
        labels = pd.read_csv(self.root / "labels.csv")
        missing = [c for c in ("file", "split", *self.schema.features) if c not in labels.columns]
        if missing:
            raise UserError(f"{self.root / 'labels.csv'}: missing column {missing[0]!r}; regenerate the dataset")
        rows = labels[labels["split"] == split]
        self.split = split
        self.files = [self.root / f for f in rows["file"]]
        self.targets = torch.as_tensor(rows[list(self.schema.features)].to_numpy(np.int64))
        self.transform = transform

    def image(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return img.convert("RGB")

    def image_name(self, index: int) -> str:
        return self.files[index].stem


def read_folder_meta(root: Path) -> dict[str, Any]:
    """``dataset.json`` of a feature folder; a missing or foreign folder is a :class:`UserError`."""
    path = root / "dataset.json"
    if not path.is_file() or not (root / "labels.csv").is_file():
        raise UserError(f"{root}: not a generated dataset (no dataset.json/labels.csv); "
                        "create it with `copd-ifm vision make-trifeature` or `make-digits`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}; regenerate the dataset")
    return meta


def folder_image_size(root: Path) -> int | None:
    """The image side (px) a generated folder was built with (``dataset.json`` construction), None if absent."""
    if not (root / "dataset.json").is_file():
        return None
    size = json.loads((root / "dataset.json").read_text(encoding="utf-8")).get("construction", {}).get("size")
    return int(size) if size else None


def _write_chunk(dataset: MultiFeatureDataset, indices: list[int], folder: Path) -> int:
    """Write items ``indices`` of ``dataset`` as PNGs into ``folder`` (existing files kept); returns the count."""
    for i in indices:
        path = folder / f"{dataset.image_name(i)}.png"
        if path.exists():
            continue
        image = dataset.image(i)
        atomic_write(path, lambda tmp: image.save(tmp, optimize=False))  # noqa: B023 (called at once)
    return len(indices)


def write_feature_folder(splits: dict[str, MultiFeatureDataset], out: str | Path,
                         construction: dict[str, Any], workers: int = 1, chunk: int = 256) -> Path:
    """Write each split's images, then ``labels.csv`` and ``dataset.json`` (atomically, last).

    ``splits`` maps split name → dataset (all with the same schema);
    ``construction`` records the generator's parameters. ``workers`` processes
    render in parallel; images already present are not rewritten (resume).
    """
    out = Path(out)
    schema = next(iter(splits.values())).schema
    frames = []
    for split, ds in splits.items():
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        chunks = [list(range(s, min(s + chunk, len(ds)))) for s in range(0, len(ds), chunk)]
        with tqdm(total=len(ds), desc=f"{schema.name} {split}", unit="img") as bar:
            if workers <= 1:
                for idx in chunks:
                    bar.update(_write_chunk(ds, idx, folder))
            else:
                with ProcessPoolExecutor(workers) as pool:
                    for n in pool.map(_write_chunk, [ds] * len(chunks), chunks, [folder] * len(chunks)):
                        bar.update(n)
        table = {"file": [f"images/{split}/{ds.image_name(i)}.png" for i in range(len(ds))],
                 "split": [split] * len(ds)}
        targets = ds.targets.numpy()
        for j, feat in enumerate(schema.features):
            table[feat] = targets[:, j]
            table[f"{feat}_name"] = np.asarray(schema.class_names[feat])[targets[:, j]]
        table.update(ds.extra_columns())
        frames.append(pd.DataFrame(table))
    atomic_write_text(out / "labels.csv", pd.concat(frames).to_csv(index=False, float_format="%.6g"))
    meta = {"format": FORMAT_VERSION, "schema": schema.to_dict(),
            "splits": {split: len(ds) for split, ds in splits.items()}, "construction": construction}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return out


def contact_sheet(dataset: MultiFeatureDataset, path: str | Path, per_row: int = 8, seed: int = 0) -> Path:
    """PNG with one row per feature value: ``per_row`` random items having that value, rows labelled.

    Rows are grouped by feature in ``schema.features`` order (Trifeature:
    10 colour rows, then 10 shape rows, then 10 texture rows).
    """
    rng = np.random.default_rng(seed)
    targets = dataset.targets.numpy()
    rows: list[list[np.ndarray]] = []
    labels: list[str] = []
    for j, feat in enumerate(dataset.schema.features):
        for v, name in enumerate(dataset.schema.class_names[feat]):
            hits = np.flatnonzero(targets[:, j] == v)
            if hits.size == 0:
                continue
            pick = rng.choice(hits, size=min(per_row, hits.size), replace=False)
            rows.append([np.asarray(dataset.image(int(i))) for i in pick])
            labels.append(f"{feat} = {name}")
    h, w = rows[0][0].shape[:2]
    pad = max(1, h // 16)
    sheet = np.full((len(rows) * (h + pad), per_row * (w + pad), 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for c, img in enumerate(imgs):
            sheet[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    row_in = 0.35  # inches per row; the dpi keeps every image at (at least) its native pixel size
    mosaic_w = sheet.shape[1] / sheet.shape[0] * len(rows) * row_in
    fig = plt.figure(figsize=(1.6 + mosaic_w, len(rows) * row_in))
    ax = fig.add_axes((1.6 / (1.6 + mosaic_w), 0.0, mosaic_w / (1.6 + mosaic_w), 1.0))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_yticks([(r + 0.5) * (h + pad) for r in range(len(rows))], labels, fontsize=7)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    path = Path(path)
    save_figure(fig, path, dpi=max(100, int((h + pad) / row_in)))
    plt.close(fig)
    return path
