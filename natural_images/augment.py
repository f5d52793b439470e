"""SimCLR and MoCo-v2 ("aug-plus") views, and the evaluation transform, per resolution (torchvision v2).

A training view::

    RandomResizedCrop(crop, scale) → flip → ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8
    → grayscale p 0.2 → GaussianBlur(kernel ≈ 10 % of crop, σ ∈ [0.1, 2]) p 0.5 → normalise

SimCLR crops areas in (0.08, 1), MoCo-v2 in (0.2, 1); the hard-negative
SimCLR code also blurs its 32-px CIFAR crops (3-px kernel), so both presets
blur at every resolution. Output: float32 ``[3, crop, crop]``, normalised.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.transforms import v2

from natural_images.config import AugmentConfig

DEFAULT_CROP_SCALE = {"simclr": (0.08, 1.0), "moco": (0.2, 1.0), "adco": (0.2, 1.0)}  # AdCo: MoCo-v2 views


def crop_scale(aug: AugmentConfig, method: str) -> tuple[float, float]:
    """The configured crop area range, else the method's default."""
    if aug.crop_scale is None:
        return DEFAULT_CROP_SCALE[method]
    low, high = aug.crop_scale
    return low, high


def blur_kernel(crop: int) -> int:
    """Odd kernel of about 10 % of the crop side (SimCLR), at least 3 px."""
    k = max(3, int(0.1 * crop))
    return k if k % 2 else k + 1


def _to_normalised(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(aug: AugmentConfig, method: str, crop: int, mean: Sequence[float],
                    std: Sequence[float]) -> v2.Compose:
    """One random view of a PIL image → ``[3, crop, crop]`` float32."""
    ops: list[Any] = [
        v2.RandomResizedCrop(crop, scale=crop_scale(aug, method), antialias=True),
        v2.RandomHorizontalFlip(aug.flip_prob),
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_prob),
        v2.RandomGrayscale(aug.grayscale_prob),
        v2.ToImage(),
    ]
    if aug.blur_prob > 0:
        # On the uint8 tensor, not the PIL image: torchvision blurs a PIL image by converting it to this
        # tensor and back, so the result is bit-identical and the two conversions are saved.
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(crop), sigma=tuple(aug.blur_sigma))],
                                  p=aug.blur_prob))
    return v2.Compose(ops + _to_normalised(mean, std)[1:])


def eval_transform(size: int, resize: float, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the short side to ``round(size · resize)``, centre-crop ``size`` → ``[3, size, size]`` float32."""
    return v2.Compose([v2.Resize(round(size * resize), antialias=True), v2.CenterCrop(size)]
                      + _to_normalised(mean, std))


class TwoViews:
    """Apply ``transform`` twice to one image: the positive pair ``(view1, view2)``."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"
