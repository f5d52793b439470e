"""SimCLR / MoCo-v2 views of a whole batch at once, on the training device (for in-memory datasets).

The per-image torchvision pipeline of :mod:`natural_images.augment` runs in
the DataLoader workers on the CPU (~150 pairs/s per core at 32 px), which a
GPU outpaces by far. :class:`BatchAugment` draws the same distributions for
a ``[B, 3, H, W]`` batch of raw images (uint8 0–255 or float 0–1) with
tensor operations, one independent draw per image::

    RandomResizedCrop(crop, scale, ratio 3/4–4/3; torchvision's 10 tries, then
    the centre fallback) → flip p → ColorJitter(b, c, s, h) in a random order
    per image, p → grayscale p → Gaussian blur (kernel ≈ 10 % of crop, σ ~ U) p
    → normalise

Differences from the per-image path, all below the quantisation of 8-bit
images: the crop is resampled by ``roi_align`` (bilinear, averaging
``ceil(box/crop)`` samples per output pixel when shrinking, where torchvision
uses antialiased bilinear), and colour operations run in float without the
PIL round trip to 8 bits between them. :func:`augment_on_device` decides
which path a run takes (``augment.device``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from copd_ifm.errors import UserError
from natural_images.augment import blur_kernel, crop_scale
from natural_images.config import AugmentConfig, VisionConfig
from natural_images.datasets import available_datasets, dataset_spec, image_sizes

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)       # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
CROP_RATIO = (3 / 4, 4 / 3)                 # RandomResizedCrop's default aspect-ratio range
CROP_TRIES = 10


def augment_on_device(config: VisionConfig, device: torch.device) -> bool:
    """Whether a run augments batches on ``device`` (True) or per image in the loader workers (False).

    ``augment.device``: ``cpu`` never, ``gpu`` always (a dataset that is not
    in memory is a UserError), ``auto`` on CUDA for in-memory datasets.
    """
    mode, name = config.augment.device, config.data.dataset
    in_memory = dataset_spec(name).in_memory
    if mode == "gpu" and not in_memory:
        known = [d for d in available_datasets() if dataset_spec(d).in_memory]
        raise UserError(f"augment.device gpu needs an in-memory dataset ({', '.join(known)}); {name} is read "
                        f"file by file: set augment.device to auto or cpu")
    return mode == "gpu" or (mode == "auto" and in_memory and device.type == "cuda")


def dataset_images(dataset: Dataset) -> Tensor:
    """Every raw image of ``dataset`` (items ``(PIL image, labels)``, no transform) as uint8 ``[N, 3, H, W]``."""
    first = np.asarray(dataset[0][0].convert("RGB"))
    out = torch.empty((len(dataset), 3, *first.shape[:2]), dtype=torch.uint8)  # type: ignore[arg-type]
    for i in range(len(out)):
        pixels = np.asarray(dataset[i][0].convert("RGB"))
        if pixels.shape != first.shape:
            raise UserError(f"image {i} is {pixels.shape[1]}x{pixels.shape[0]} px, image 0 "
                            f"{first.shape[1]}x{first.shape[0]}: on-device augmentation needs one size")
        out[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    return out


def _uniform(n: int, low: float, high: float, like: Tensor, gen: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=gen)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], device: torch.device,
               gen: torch.Generator | None = None) -> Tensor:
    """``n`` RandomResizedCrop boxes ``[n, 4]`` (top, left, h, w) in px, drawn as torchvision draws one.

    Up to 10 tries of area ~ U(scale)·H·W and log aspect ~ U(log 3/4, log 4/3);
    the first box that fits wins, at a uniform position; else a centre crop
    clamped to the ratio range.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, CROP_TRIES, device=device, generator=gen))
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, CROP_TRIES, device=device, generator=gen))
    w = torch.round(torch.sqrt(target * ratio))
    h = torch.round(torch.sqrt(target / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)             # index of the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fb_w, fb_h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fb_w, fb_h = round(height * CROP_RATIO[1]), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(found, w, torch.full_like(w, fb_w))
    h = torch.where(found, h, torch.full_like(h, fb_h))
    u = torch.rand(n, 2, device=device, generator=gen)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fb_h) // 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fb_w) // 2))
    return torch.stack([top, left, h, w], dim=1)


def grayscale(x: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (0–1)."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB ``[B, 3, H, W]`` in 0–1 → HSV, hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    hue = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, (hue / 6) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV ``[B, 3, H, W]`` (hue in [0, 1)) → RGB in 0–1."""
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6
    # Per hue sector, which of (v, q, p, t) is red, green and blue.
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    choices = torch.stack([v, q, p, t], dim=1)                     # [B, 4, H, W]
    index = table[sector].permute(0, 3, 1, 2)                      # [B, 3, H, W]
    return choices.gather(1, index)


def _jitter_op(x: Tensor, op: int, factor: Tensor) -> Tensor:
    if op == 0:                                                    # brightness
        return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)
    if op == 1:                                                    # contrast: towards the mean luma
        return _blend(x, grayscale(x).mean(dim=(2, 3), keepdim=True), factor)
    if op == 2:                                                    # saturation: towards the luma image
        return _blend(x, grayscale(x), factor)
    hsv = rgb_to_hsv(x)
    hue = (hsv[:, 0] + factor.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def gaussian_blur(x: Tensor, kernel: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with one σ (px) per image, reflect padding."""
    b, c, height, width = x.shape
    half = (kernel - 1) / 2
    taps = torch.linspace(-half, half, kernel, device=x.device)
    weights = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, dim=0)   # [B·C, k]
    flat = F.pad(x.reshape(1, b * c, height, width), [kernel // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, weights.view(b * c, 1, 1, kernel), groups=b * c)
    flat = F.conv2d(flat, weights.view(b * c, 1, kernel, 1), groups=b * c)
    return flat.view(b, c, height, width)


def _apply_to_rows(x: Tensor, rows: Tensor, op: Callable[[Tensor, Tensor], Tensor], param: Tensor,
                   select: bool | None = None) -> Tensor:
    """``x`` ``[B, ...]`` with ``op(x[r], param[r])`` on the rows ``r`` where ``rows`` ``[B]`` (bool) is set.

    On the CPU only those rows are computed, written into ``x`` in place. On an accelerator every row is
    computed and the chosen ones kept: a selection of data-dependent size would make the host wait for
    the device. The values are the same (every op here works image by image). ``select`` forces a path.
    """
    if x.device.type == "cpu" if select is None else select:
        if rows.any():
            x[rows] = op(x[rows], param[rows])
        return x
    return torch.where(rows.view(-1, *[1] * (x.dim() - 1)), op(x, param), x)


class BatchAugment:
    """One random view per image of a batch: ``[B, 3, H, W]`` raw → ``[B, 3, crop, crop]`` float32, normalised."""

    def __init__(self, aug: AugmentConfig, method: str, crop: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.aug, self.crop = aug, crop
        self.scale = crop_scale(aug, method)
        self.kernel = blur_kernel(crop)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: Tensor, gen: torch.Generator | None = None) -> Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        b, _, height, width = x.shape
        dev, aug = x.device, self.aug
        top, left, h, w = crop_boxes(b, height, width, self.scale, dev, gen).unbind(1)
        boxes = torch.stack([torch.arange(b, device=dev, dtype=x.dtype), left, top, left + w, top + h], dim=1)
        x = roi_align(x, boxes, (self.crop, self.crop), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flip = torch.rand(b, device=dev, generator=gen) < aug.flip_prob
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = self._jitter(x, gen)
        gray = torch.rand(b, device=dev, generator=gen) < aug.grayscale_prob
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if aug.blur_prob > 0:
            sigma = _uniform(b, *aug.blur_sigma, x, gen)
            blur = torch.rand(b, device=dev, generator=gen) < aug.blur_prob
            x = _apply_to_rows(x, blur, lambda rows, s: gaussian_blur(rows, self.kernel, s), sigma)
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        return (x - mean) / std

    def _jitter(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """ColorJitter with probability ``jitter_prob``: four factors and a random op order per image."""
        b = x.shape[0]
        bright, contrast, sat, hue = self.aug.jitter
        factors = torch.stack([_uniform(b, max(0.0, 1 - bright), 1 + bright, x, gen),
                               _uniform(b, max(0.0, 1 - contrast), 1 + contrast, x, gen),
                               _uniform(b, max(0.0, 1 - sat), 1 + sat, x, gen),
                               _uniform(b, -hue, hue, x, gen)], dim=1)
        order = torch.rand(b, 4, device=x.device, generator=gen).argsort(dim=1)   # a random permutation per image
        apply = torch.rand(b, device=x.device, generator=gen) < self.aug.jitter_prob
        x = x.clone()
        for position in range(4):
            for op in range(4):
                x = _apply_to_rows(x, apply & (order[:, position] == op),
                                   lambda rows, f, op=op: _jitter_op(rows, op, f), factors[:, op])
        return x

    def two_views(self, images: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The positive pair ``(view1, view2)`` of a raw batch, each ``[B, 3, crop, crop]``."""
        return self(images, gen), self(images, gen)


def build_batch_augment(config: VisionConfig) -> BatchAugment:
    """The run's view generator on tensors: its augmentation, method, training crop and the dataset's normalisation."""
    spec = dataset_spec(config.data.dataset)
    return BatchAugment(config.augment, config.method, image_sizes(config.data)[0], spec.mean, spec.std)
