"""Weighted kNN classifier on frozen features (the InstDisc / MoCo-demo monitor).

For a query ``q`` and bank features ``bᵢ`` (all L2-normalised), the ``k``
most cosine-similar bank items vote for their class with weight
``exp(q·bᵢ / T)``; the prediction is the class with the largest total.
Defaults ``k = 200``, ``T = 0.1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_scores(query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
               temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class scores ``[M, C]`` for queries ``[M, D]`` from a bank ``[N, D]`` with labels ``[N]`` in ``[0, C)``.

    ``k`` is capped at ``N``; queries are processed ``chunk`` at a time so the
    ``[chunk, N]`` similarity block bounds memory.
    """
    q = F.normalize(query.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    k = min(k, b.shape[0])
    out = []
    for start in range(0, q.shape[0], chunk):
        sim = q[start:start + chunk] @ b.T
        weight, idx = sim.topk(k, dim=1)
        scores = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        out.append(scores.scatter_add_(1, bank_labels[idx], (weight / temperature).exp()))
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(query: Tensor, query_labels: Tensor, bank: Tensor, bank_labels: Tensor, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy of :func:`knn_scores`; bank items with a negative label (unlabelled) are left out."""
    keep = bank_labels >= 0
    bank, bank_labels = bank[keep], bank_labels[keep]
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_scores(query, bank, bank_labels, num_classes, k, temperature).argmax(1)
    return (pred == query_labels).float().mean().item()
