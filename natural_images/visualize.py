"""Visualising IFM (paper Sec. 3.1, Fig. 4): the training images nearest to IFM's perturbed keys.

In the run's embedding space ``z`` (the normalised projection-head output
``model.project``, where the loss compares), for anchor image ``i`` of the
training split::

    v   = z(one training-augmentation view of image i)       # the query (seeded view)
    v⁺  = z(image i, evaluation transform)                    # its positive, itself in the bank
    v⁻  = z(image j, evaluation transform), j ≠ i random      # a negative, also in the bank
    bank = z of every training image, evaluation transform (no augmentation)

and for each ε (0 always included) the 1-nearest bank image by cosine of
``v⁺ − εv`` (IFM's positive) and of ``v⁻ + εv`` (IFM's negative). At ε = 0 the
neighbours are ``v⁺`` and ``v⁻`` themselves (cosine 1 to themselves) unless the
bank holds an identical embedding. ``DIR/ifm_neighbours.png``: two rows per
anchor (``v⁺ − εv``, ``v⁻ + εv``), the anchor view first, then one column per ε,
each neighbour captioned with its cosine to the anchor ``v``
(:func:`copd_ifm.contrastive.neighbours.plot_neighbour_grid`);
``DIR/ifm_neighbours.json``: the same numbers and bank indices. CT runs have their
own command, ``copd-ifm visualize-ifm``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from copd_ifm import files
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.neighbours import perturbed_neighbours, pick_anchors, plot_neighbour_grid, with_zero
from copd_ifm.errors import UserError
from natural_images.augment import eval_transform, train_transform
from natural_images.datasets import build_dataset, dataset_spec, image_sizes
from natural_images.features import extract_features
from natural_images.run import load_model


class Projection(nn.Module):
    """``model.project`` as a module ``[B, 3, H, W] → [B, dim]`` (unit rows), for :func:`extract_features`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a fresh module is in training mode; mirror the model's

    def forward(self, x: Tensor) -> Tensor:
        return self.model.project(x)


def visualize_ifm(run_dir: str | Path, eps: Sequence[float] = (0.1, 0.2, 1.0), anchors: int = 4,
                  out: str | Path | None = None, device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Neighbour grid of a vision run (see module doc); writes ``OUT/ifm_neighbours.{png,json}``.

    ``out`` defaults to ``RUN/ifm``. ``eps`` gains ε = 0 in front when missing.
    ``anchors`` evenly spaced training images are used; the anchor views and
    negatives are drawn with ``seed``. Returns the JSON content.
    """
    if anchors < 1:
        raise UserError(f"--anchors must be >= 1, got {anchors}")
    eps = with_zero(eps)
    with D.session(device) as info:
        return _visualize(Path(run_dir), eps, anchors, Path(out) if out else Path(run_dir) / "ifm", info.device, seed)


def _visualize(run_dir: Path, eps: list[float], anchors: int, folder: Path, dev: torch.device,
               seed: int) -> dict[str, Any]:
    model, run_cfg = load_model(run_dir, dev)
    data = dataclasses.replace(run_cfg.data, download=False)
    spec = dataset_spec(data.dataset)
    crop, size = image_sizes(data)
    evaluation = eval_transform(size, spec.eval_resize, spec.mean, spec.std)
    bank_set, raw_set = build_dataset(data, "train", evaluation), build_dataset(data, "train")
    n = len(bank_set)  # type: ignore[arg-type]
    if n < 2:
        raise UserError(f"{run_dir}: the training split has {n} image(s); the bank needs at least 2")
    bank, _ = extract_features(Projection(model), bank_set, batch_size=run_cfg.linear.batch_size,
                               workers=data.workers, device=dev, desc="memory bank")
    index, others = pick_anchors(n, anchors, seed)
    augment = train_transform(run_cfg.augment, run_cfg.method, crop, spec.mean, spec.std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = torch.stack([augment(raw_set[int(i)][0]) for i in index])
    with torch.no_grad():
        anchor = model.project(views.to(dev))
    found = perturbed_neighbours(anchor, bank[index.to(dev)], bank[others.to(dev)], bank, eps)
    result = {"run": str(run_dir), "space": "normalised projection-head output z (model.project)",
              "bank_size": n, "eps": eps, "anchor_index": index.tolist(), "negative_index": others.tolist(),
              **{k: v.tolist() for k, v in found.items()}}
    files.atomic_write_text(folder / "ifm_neighbours.json", json.dumps(result, indent=2) + "\n")
    plot_neighbour_grid([_picture(v, spec.mean, spec.std) for v in views],
                        lambda i: _picture(bank_set[i][0], spec.mean, spec.std), found, eps,
                        folder / "ifm_neighbours.png", "Nearest training images to IFM-perturbed keys "
                                                       "(cosine to the anchor)")
    return result


def _picture(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``[3, H, W]`` → displayable ``[H, W, 3]`` in [0, 1]."""
    rgb = image.cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()
