"""IFM's perturbed keys in embedding space and their nearest neighbours in a memory bank (paper Sec. 3.1).

For an anchor ``v``, its positive ``v⁺`` and a negative ``v⁻`` (unit rows), IFM's
worst-case keys are ``v⁺ − εv`` and ``v⁻ + εv``. Looking up the bank item most
cosine-similar to each shows what the perturbation removes from (or adds to) a
key. Domain-free: images and CT subjects alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def perturbed_neighbours(anchor: Tensor, positive: Tensor, negative: Tensor, bank: Tensor,
                         eps: Sequence[float]) -> dict[str, Tensor]:
    """1-NN by cosine in ``bank`` ``[N, D]`` of ``v⁺ − εv`` and ``v⁻ + εv`` for anchors ``v`` ``[A, D]``.

    ``positive``, ``negative``: ``[A, D]``; all rows unit vectors. Returns bank
    indices ``pos_index``/``neg_index`` ``[A, E]`` (one column per ε) and the
    cosine of each retrieved bank item to its anchor, ``pos_cos``/``neg_cos`` ``[A, E]`` (on the CPU).
    """
    bank_n = F.normalize(bank, dim=1)
    out: dict[str, list[Tensor]] = {"pos_index": [], "neg_index": [], "pos_cos": [], "neg_cos": []}
    for e in eps:
        for name, key in (("pos", positive - e * anchor), ("neg", negative + e * anchor)):
            index = (F.normalize(key, dim=1) @ bank_n.T).argmax(1)
            out[f"{name}_index"].append(index)
            out[f"{name}_cos"].append((bank_n[index] * anchor).sum(1))
    return {name: torch.stack(cols, 1).cpu() for name, cols in out.items()}


def with_zero(eps: Sequence[float]) -> list[float]:
    """``eps`` sorted, without duplicates, with ε = 0 in front (the unperturbed keys)."""
    if any(e < 0 for e in eps):
        raise ValueError(f"ε values must be >= 0, got {list(eps)}")
    return [0.0] + sorted(set(float(e) for e in eps) - {0.0})


def pick_anchors(n: int, anchors: int, seed: int) -> tuple[Tensor, Tensor]:
    """``anchors`` bank indices evenly spaced over ``0 … n − 1`` and, per anchor, a random other index (seeded).

    Returns ``index`` ``[A]`` and ``others`` ``[A]`` with ``others ≠ index`` row by row; needs ``n >= 2``.
    """
    index = torch.linspace(0, n - 1, min(anchors, n)).round().long().unique()
    shift = torch.randint(1, n, (len(index),), generator=torch.Generator().manual_seed(seed))
    return index, (index + shift) % n
