"""SimCLR and MoCo-v2 ("aug-plus") views, and the evaluation transform, per resolution (torchvision v2).

A training view::

    RandomResizedCrop(crop, scale) → flip → ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8
    → grayscale p 0.2 → GaussianBlur(kernel ≈ 10 % of crop, σ ∈ [0.1, 2]) p 0.5 → normalise

SimCLR crops areas in (0.08, 1), MoCo-v2 in (0.2, 1); the hard-negative
SimCLR code also blurs its 32-px CIFAR crops (3-px kernel), so both presets
blur at every resolution. Output: float32 ``[3, crop, crop]``, normalised.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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
    return [ToNormalised(mean, std)]


class ToNormalised:
    """``ToImage → ToDtype(float32, scale) → Normalize(mean, std)`` through their functions in one call:
    the same values without three transform dispatches per view."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        return TF.normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"ToNormalised(mean={self.mean}, std={self.std})"


def train_transform(aug: AugmentConfig, method: str, crop: int, mean: Sequence[float],
                    std: Sequence[float]) -> v2.Compose:
    """One random view of a PIL image → ``[3, crop, crop]`` float32."""
    ops: list[Any] = [
        v2.RandomResizedCrop(crop, scale=crop_scale(aug, method), antialias=True),
        v2.RandomHorizontalFlip(aug.flip_prob),
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_prob),
        v2.RandomGrayscale(aug.grayscale_prob),
    ]
    if aug.blur_prob > 0:
        ops.append(v2.RandomApply([GaussianBlur(blur_kernel(crop), tuple(aug.blur_sigma))], p=aug.blur_prob))
    return v2.Compose(ops + _to_normalised(mean, std))


def reflect_pad(image: Image.Image, half: int) -> Image.Image:
    """``image`` padded by ``half`` px on every side by reflection (``np.pad``'s ``reflect``), in PIL operations."""
    w, h = image.size
    out = Image.new(image.mode, (w + 2 * half, h + 2 * half))
    out.paste(image, (half, half))
    out.paste(image.crop((1, 0, 1 + half, h)).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0, half))
    out.paste(image.crop((w - 1 - half, 0, w - 1, h)).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (w + half, half))
    out.paste(out.crop((0, half + 1, w + 2 * half, 2 * half + 1)).transpose(Image.Transpose.FLIP_TOP_BOTTOM), (0, 0))
    out.paste(out.crop((0, h - 1, w + 2 * half, h + half - 1)).transpose(Image.Transpose.FLIP_TOP_BOTTOM),
              (0, h + half))
    return out


class GaussianBlur:
    """torchvision's ``GaussianBlur(kernel, σ ~ U(sigma))`` on a PIL image, through PIL's C filter when it can.

    The same σ draw as torchvision's (one ``torch.empty(1).uniform_``) and the same kernel: the outer
    product of 1-D weights ``exp(−x²/2σ²)``, ``x`` the integer offsets, normalised; reflect padding. PIL
    filters 3×3 and 5×5 kernels (crops under 60 px) ~10× faster than torchvision's round trip through a
    tensor; both round to 8 bits, so a rare pixel may differ by one grey level. Larger kernels, tensors
    and other image modes go through torchvision. (PIL's own ``ImageFilter.GaussianBlur``, which lightly
    and MoCo-v2 use, is a box-filter approximation with support growing with σ, not this truncated kernel.)
    """

    def __init__(self, kernel: int, sigma: tuple[float, float]) -> None:
        self.kernel, self.sigma = kernel, sigma

    def __call__(self, image: Any) -> Any:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        if self.kernel > 5 or not isinstance(image, Image.Image) or image.mode not in ("L", "RGB"):
            return TF.gaussian_blur(image, [self.kernel, self.kernel], [sigma, sigma])
        half = self.kernel // 2
        taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-half, half + 1)]
        total = sum(taps)
        taps = [t / total for t in taps]
        weights = [a * b for a in taps for b in taps]
        blurred = reflect_pad(image, half).filter(ImageFilter.Kernel((self.kernel, self.kernel), weights, scale=1))
        return blurred.crop((half, half, half + image.width, half + image.height))

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel={self.kernel}, sigma={self.sigma})"


def eval_transform(size: int, resize: float, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the short side to ``round(size · resize)``, centre-crop ``size`` → ``[3, size, size]`` float32."""
    return v2.Compose([v2.Resize(round(size * resize), antialias=True), v2.CenterCrop(size)]
                      + _to_normalised(mean, std))


def linear_train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The official linear protocol's training view (MoCo ``main_lincls.py``): ``RandomResizedCrop(size)`` at
    torchvision's default scale (0.08, 1), horizontal flip → ``[3, size, size]`` float32."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
                      + _to_normalised(mean, std))


class TwoViews:
    """Apply ``transform`` twice to one image: the positive pair ``(view1, view2)``."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"
