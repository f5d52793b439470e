"""Linear read-out on the frozen encoder, in two modes that every result names (``readout``).

* Cached features (default, fast; small studies): train and test images go through the frozen encoder
  once (evaluation transform, no augmentation) and a linear layer ``[F] → [C]`` is trained on the cache.
  With ``linear.standardize`` each feature is first z-scored with the training split's mean and sd: the
  same linear family, but a fixed step budget then converges whatever the encoder's feature scale (an
  untrained encoder's differs by seed).
* Augmented images (``linear.augment``; the official MoCo/IFM ``main_lincls.py`` protocol, used by the
  ImageNet100 configs): every epoch each training image is a new RandomResizedCrop + flip view encoded on
  the fly by the frozen encoder (eval mode); test images keep the evaluation transform.

Both use the configured optimiser and schedule (×0.1 at ``milestones`` epochs), ``N(0, 0.01²)`` weights and
zero bias, and report test top-1 per epoch. Datasets with several label columns (Trifeature) get one
classifier per column. Accuracies are reported in percent.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.optim import build_optimizer, build_scheduler
from copd_ifm.contrastive.runtime import autocast
from copd_ifm.errors import UserError
from natural_images.augment import eval_transform, linear_train_transform
from natural_images.config import LinearConfig
from natural_images.datasets import (as_label_matrix, build_dataset, dataset_labels, dataset_spec, image_sizes,
                                     label_names)
from natural_images.features import extract_features
from natural_images.plots import plot_linear
from natural_images.run import load_encoder, load_run_config, update_summary


@torch.no_grad()
def top1(layer: nn.Module, x: Tensor, y: Tensor, batch: int = 8192) -> float:
    """Share of rows of ``x`` ``[N, F]`` whose arg-max logit equals ``y`` ``[N]``."""
    correct = sum(int((layer(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum()) for s in range(0, len(x), batch))
    return correct / max(len(x), 1)


class Standardize(nn.Module):
    """``(x − mean) / sd`` per feature, ``x`` ``[N, F]``; mean and sd ``[F]`` are fixed buffers."""

    def __init__(self, mean: Tensor, sd: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("sd", sd)

    @classmethod
    def fit(cls, x: Tensor) -> Standardize:
        """Statistics of ``x`` ``[N, F]``; a constant feature gets sd 1 (it stays 0 after centring)."""
        sd = x.std(0) if len(x) > 1 else torch.ones_like(x[0])
        return cls(x.mean(0), torch.where(sd > 1e-12, sd, torch.ones_like(sd)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.sd


def init_classifier(in_dim: int, num_classes: int, gen: torch.Generator, device: torch.device) -> nn.Linear:
    """``Linear(in_dim, num_classes)`` with ``N(0, 0.01²)`` weights drawn from ``gen`` and zero bias (MoCo's
    ``main_lincls.py``)."""
    linear = nn.Linear(in_dim, num_classes).to(device)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * 0.01)
        linear.bias.zero_()
    return linear


def _schedule(optimizer: torch.optim.Optimizer, lin: LinearConfig, steps: int) -> Any:
    """Per-step: ×0.1 after each of ``lin.milestones`` epochs of ``steps`` steps, else ``lin.optim``'s schedule."""
    if lin.milestones:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [m * steps for m in lin.milestones], 0.1)
    return build_scheduler(optimizer, lin.optim, lin.epochs * steps, steps)


def fit_linear(train_x: Tensor, train_y: Tensor, num_classes: int, lin: LinearConfig, seed: int = 0,
               test_x: Tensor | None = None, test_y: Tensor | None = None,
               desc: str = "linear") -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``Linear(F, num_classes)`` on cached features ``[N, F]`` and labels ``[N]`` (same device).

    Initialisation :func:`init_classifier`; mini-batches of ``lin.batch_size`` in a seeded random order;
    per-step schedule from ``lin.optim`` or ×0.1 decays at ``lin.milestones`` epochs.
    With ``lin.standardize`` the returned module is ``Standardize`` (fitted on
    ``train_x``) followed by the layer. Returns the module and one history row
    per epoch (train loss/top-1, test top-1, the epoch's learning rate).
    """
    gen = torch.Generator().manual_seed(seed)
    linear = init_classifier(train_x.shape[1], num_classes, gen, train_x.device)
    layer: nn.Module = nn.Sequential(Standardize.fit(train_x), linear) if lin.standardize else linear
    optimizer = build_optimizer(linear.parameters(), lin.optim)
    n = train_x.shape[0]
    scheduler = _schedule(optimizer, lin, math.ceil(n / lin.batch_size))
    history = []
    for epoch in tqdm(range(lin.epochs), desc=desc, leave=False, disable=not D.is_main()):
        order = torch.randperm(n, generator=gen).to(train_x.device)
        lr = optimizer.param_groups[0]["lr"]
        # Summed on the device and read once per epoch: an .item() per step would wait for the device.
        loss_sum = torch.zeros((), dtype=torch.float64, device=train_x.device)   # float64: as the Python sum was
        correct = torch.zeros((), dtype=torch.long, device=train_x.device)
        for start in range(0, n, lin.batch_size):
            idx = order[start:start + lin.batch_size]
            logits = layer(train_x[idx])
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.argmax(1) == train_y[idx]).sum()
        history.append(_epoch_row(epoch, loss_sum.item(), int(correct), n, lr, layer, test_x, test_y))
    return layer, history


def fit_linear_augmented(encoder: nn.Module, train_set: Dataset, column: int, num_classes: int, in_dim: int,
                         lin: LinearConfig, device: torch.device, seed: int = 0, workers: int = 0,
                         amp: bool = False, channels_last: bool = False, test_x: Tensor | None = None,
                         test_y: Tensor | None = None,
                         desc: str = "linear") -> tuple[nn.Linear, list[dict[str, float]]]:
    """The official protocol: ``Linear(in_dim, num_classes)`` on the frozen ``encoder``'s features of
    ``train_set``'s (augmenting) images, label column ``column`` (rows labelled < 0 are skipped).

    The encoder stays in eval mode (BatchNorm running statistics, as ``main_lincls.py``) and gets no gradient;
    the image order of epoch ``e`` comes from ``(seed, e)``, the views from the seeded process and worker RNGs.
    Under DDP each rank encodes its shard of a global batch of ``lin.batch_size`` and the layer's gradient is
    averaged over ranks. Returns the layer and one history row per epoch as :func:`fit_linear`.
    """
    world = D.world_size()
    if lin.batch_size % world:
        raise UserError(f"linear.batch_size {lin.batch_size} must be divisible by the {world} processes")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + D.rank())  # the views of a worker-less loader come from the process RNG
    linear = init_classifier(in_dim, num_classes, gen, device)
    optimizer = build_optimizer(linear.parameters(), lin.optim)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=D.rank(), shuffle=True, seed=seed)
    loader = DataLoader(train_set, batch_size=lin.batch_size // world, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    scheduler = _schedule(optimizer, lin, len(loader))
    was_training = encoder.training
    encoder.eval()
    history = []
    for epoch in tqdm(range(lin.epochs), desc=desc, leave=False, disable=not D.is_main()):
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, n = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for images, target in loader:
            y = as_label_matrix(target)[:, column].to(device)
            images = images.to(device, non_blocking=True)[y >= 0]
            y = y[y >= 0]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, amp):
                feats = encoder(images).float()
            logits = linear(feats)
            loss = F.cross_entropy(logits, y, reduction="sum") / max(len(y), 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p in linear.parameters():
                p.grad = D.all_reduce_mean(p.grad)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
        totals = D.all_reduce_mean(torch.stack([loss_sum, correct.float(), torch.tensor(float(n), device=device)]))
        history.append(_epoch_row(epoch, float(totals[0]), float(totals[1]), float(totals[2]), lr, linear, test_x,
                                  test_y))
    encoder.train(was_training)
    return linear, history


def _epoch_row(epoch: int, loss_sum: float, correct: float, n: float, lr: float, layer: nn.Module,
               test_x: Tensor | None, test_y: Tensor | None) -> dict[str, float]:
    """One history row; ``lr`` is the rate the epoch trained at."""
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1), "train_top1": 100 * correct / max(n, 1), "lr": lr}
    if test_x is not None and test_y is not None:
        row["test_top1"] = 100 * top1(layer, test_x, test_y)
    return row


def resolve_linear_config(run_dir: str | Path, overrides: list[str] | None = None) -> LinearConfig:
    """The run's ``linear`` section with ``--set``-style ``key=value`` overrides (keys inside that section)."""
    data = cfg.apply_overrides(cfg.to_dict(load_run_config(run_dir).linear), overrides)
    return cfg.from_dict(LinearConfig, data, f"{Path(run_dir) / 'config.yaml'} (linear)")


def linear_readout(run_dir: str | Path, dataset: str | None = None, linear: LinearConfig | None = None,
                   device: str = "auto", data_root: str | None = None, download: bool = False,
                   workers: int | None = None) -> dict[str, Any]:
    """Linear read-out of run ``run_dir`` on ``dataset`` (default: the pretraining dataset).

    Writes ``RUN/linear.json`` (per dataset: test top-1 per label column),
    ``RUN/linear.csv`` (per epoch), ``RUN/linear.png`` and a ``linear`` entry in
    ``RUN/summary.json``; returns this dataset's result.
    """
    with D.session(device) as info:
        return _readout(Path(run_dir), dataset, linear, info, data_root, download, workers)


def _readout(run_dir: Path, dataset: str | None, linear: LinearConfig | None, info: D.DistInfo,
             data_root: str | None, download: bool, workers: int | None) -> dict[str, Any]:
    encoder, run_cfg = load_encoder(run_dir, info.device)
    lin = linear or run_cfg.linear
    data = dataclasses.replace(run_cfg.data, dataset=dataset or run_cfg.data.dataset, download=download,
                               root=data_root or run_cfg.data.root,
                               workers=run_cfg.data.workers if workers is None else workers)
    spec = dataset_spec(data.dataset)
    size = image_sizes(data)[1]
    transform = eval_transform(size, spec.eval_resize, spec.mean, spec.std)
    train_set = build_dataset(data, "train", transform)
    test_set = build_dataset(data, "test", transform)
    names = label_names(train_set)
    cuda = info.device.type == "cuda"
    extract = dict(batch_size=lin.batch_size, workers=data.workers, device=info.device, amp=run_cfg.amp and cuda,
                   channels_last=run_cfg.channels_last and cuda)
    test_x, test_y = extract_features(encoder, test_set, desc=f"{data.dataset} test features", **extract)
    if lin.augment:  # the training images are encoded epoch by epoch; only their labels are needed here
        augmented = build_dataset(data, "train", linear_train_transform(size, spec.mean, spec.std))
        train_x, train_y = None, dataset_labels(augmented).to(info.device)
    else:
        train_x, train_y = extract_features(encoder, train_set, desc=f"{data.dataset} train features", **extract)
    result: dict[str, Any] = {"dataset": data.dataset, "image_size": size, "train_size": len(train_y),
                              "test_size": len(test_x), "readout": lin.readout, "linear": cfg.to_dict(lin),
                              "top1": {}}
    rows = []
    for col, name in enumerate(names):
        tr, te = train_y[:, col] >= 0, test_y[:, col] >= 0
        num_classes = int(max(train_y[tr, col].max(), test_y[te, col].max())) + 1
        if lin.augment:
            _, history = fit_linear_augmented(encoder, augmented, col, num_classes, test_x.shape[1], lin,
                                              info.device, seed=run_cfg.seed, workers=data.workers,
                                              amp=extract["amp"], channels_last=extract["channels_last"],
                                              test_x=test_x[te], test_y=test_y[te, col], desc=f"linear {name}")
        else:
            _, history = fit_linear(train_x[tr], train_y[tr, col], num_classes, lin, seed=run_cfg.seed,
                                    test_x=test_x[te], test_y=test_y[te, col], desc=f"linear {name}")
        result["top1"][name] = history[-1]["test_top1"]
        rows += [{"dataset": data.dataset, "label": name, "readout": "augmented" if lin.augment else "cached",
                  **h} for h in history]
    if D.is_main():
        _write_outputs(run_dir, data.dataset, result, pd.DataFrame(rows))
    return result


def _write_outputs(run_dir: Path, dataset: str, result: dict[str, Any], history: pd.DataFrame) -> None:
    json_path, csv_path = run_dir / "linear.json", run_dir / "linear.csv"
    results = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}
    results[dataset] = result
    files.atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    table = history
    if csv_path.is_file():
        previous = pd.read_csv(csv_path)
        table = pd.concat([previous[previous["dataset"] != dataset], history], ignore_index=True)
    files.atomic_write_text(csv_path, table.to_csv(index=False))
    plot_linear(table, run_dir / "linear.png")
    update_summary(run_dir, linear={name: r["top1"] for name, r in results.items()},
                   linear_readout={name: r.get("readout", LinearConfig().readout) for name, r in results.items()})

