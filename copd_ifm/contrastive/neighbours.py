"""IFM's perturbed keys in embedding space and their nearest neighbours in a memory bank (paper Sec. 3.1).

For an anchor ``v``, its positive ``v⁺`` and a negative ``v⁻`` (unit rows), IFM's
worst-case keys are ``v⁺ − εv`` and ``v⁻ + εv``. Looking up the bank item most
cosine-similar to each shows what the perturbation removes from (or adds to) a
key. Domain-free: images and CT subjects alike. :func:`plot_neighbour_grid` draws the result: two rows
per anchor (``v⁺ − εv``, ``v⁻ + εv``), the anchor view first, then one column per ε with the retrieved bank
item, captioned with its cosine to the anchor ``v``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from copd_ifm import files


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


def plot_neighbour_grid(anchor_pictures: Sequence[np.ndarray], picture: Callable[[int], np.ndarray],
                        found: dict[str, Tensor], eps: Sequence[float], path: Path, title: str,
                        grey_range: tuple[float, float] | None = None) -> None:
    """Draw the grid to ``path`` (PNG). Pictures are ``[H, W, 3]`` in [0, 1], or ``[H, W]`` shown in grey
    over ``grey_range``; ``picture(i)`` draws bank item ``i``; ``found`` as from :func:`perturbed_neighbours`."""
    rows, cols = 2 * len(anchor_pictures), len(eps) + 1
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = {"cmap": "gray", "vmin": grey_range[0], "vmax": grey_range[1]} if grey_range else {}
    for a, anchor in enumerate(anchor_pictures):
        for r, (name, label) in enumerate((("pos", "v⁺ − εv"), ("neg", "v⁻ + εv"))):
            row = axes[2 * a + r]
            row[0].imshow(anchor, **shown)
            row[0].set_title(f"anchor {a} (view v)" if r == 0 else "", fontsize=8)
            row[0].set_ylabel(label, fontsize=8)
            for c, e in enumerate(eps, start=1):
                row[c].imshow(picture(int(found[f"{name}_index"][a, c - 1])), **shown)
                if 2 * a + r == 0:
                    row[c].set_title(f"ε = {e:g}", fontsize=8)
                row[c].set_xlabel(f"cos {float(found[f'{name}_cos'][a, c - 1]):.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    files.save_figure(fig, path, dpi=120)
