"""Frozen-encoder features of a whole dataset, sharded over ranks under DDP."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.runtime import autocast, loader_workers
from copd_ifm.errors import UserError
from natural_images.datasets import as_label_matrix


class _Indexed(Dataset):
    """``(index, image, labels)`` so shards gathered from several ranks can be put back in order."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any, Any]:
        image, labels = self.dataset[index]
        return index, image, labels


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                     amp: bool = False, channels_last: bool = False, desc: str = "features") -> tuple[Tensor, Tensor]:
    """Encode every item of ``dataset`` (images already transformed to ``[3, H, W]``).

    Returns features ``[N, F]`` float32 and labels ``[N, L]`` int64 on ``device``,
    in dataset order, on every rank. The encoder runs in eval mode (BatchNorm
    running statistics) and is put back in its previous mode.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise UserError(f"{desc}: the dataset is empty; check the dataset folder")
    indexed = _Indexed(dataset)
    sampler = DistributedSampler(indexed, shuffle=False) if D.is_distributed() else None
    loader = DataLoader(indexed, batch_size=batch_size, sampler=sampler, num_workers=loader_workers(workers),
                        pin_memory=device.type == "cuda")
    was_training = encoder.training
    encoder.eval()
    index, feats, labels = [], [], []
    for idx, images, target in tqdm(loader, desc=desc, leave=False, disable=not D.is_main()):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            feats.append(encoder(images).float())
        labels.append(as_label_matrix(target).to(device))
        index.append(idx.to(device))
    encoder.train(was_training)
    f, y, i = torch.cat(feats), torch.cat(labels), torch.cat(index)
    if not D.is_distributed():
        return f, y
    # DistributedSampler pads shards to equal length by repeating items: scatter by index drops the repeats.
    f, y, i = D.all_gather_no_grad(f), D.all_gather_no_grad(y), D.all_gather_no_grad(i)
    out_f = f.new_empty(n, f.shape[1])
    out_y = y.new_empty(n, y.shape[1])
    out_f[i], out_y[i] = f, y
    return out_f, out_y
