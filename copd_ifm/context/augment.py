"""Batched 3-D augmentations of CT patches, on whatever device the batch is on.

MONAI's ``Rand3DElastic`` resamples one patch at a time (≈ 23 ms per 32³ patch
on a CPU core, slower than the encoder), so these transforms draw their random
parameters per *group* of patches and resample a whole batch ``[B, 1, P, P, P]``
with a single ``grid_sample``. A group is one patch (patch level) or one
subject view (graph level: all its patches share one deformation, as in the
anchor). Intensities are network units, ``(HU + 1024)/632 − 1``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from copd_ifm.context.config import AugmentConfig

HU_PER_UNIT = 632.0  # network unit = 632 HU


def _rotation(angles: Tensor) -> Tensor:
    """Rotation matrices ``[G, 3, 3]`` from Euler angles ``[G, 3]`` (radians, x-y-z)."""
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


class RandAffineElastic3D:
    """Random rotation, scaling, translation and smooth elastic displacement, one draw per group.

    Lengths in the config are voxels of a 32³ patch and are scaled to the patch
    size ``P``. Border padding (the anchor's ``padding_mode="border"``).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: Tensor, groups: Tensor | None = None) -> Tensor:
        """``x`` ``[B, 1, P, P, P]``; ``groups`` ``[B]`` long in ``[0, G)`` (default: one group per patch)."""
        b, p = x.shape[0], x.shape[-1]
        groups = torch.arange(b, device=x.device) if groups is None else groups.to(x.device)
        g = int(groups.max()) + 1
        cfg, dev = self.cfg, x.device
        unit = 2.0 / p  # one voxel in normalised [-1, 1] coordinates
        size_factor = p / 32.0
        angles = (torch.rand(g, 3, device=dev) * 2 - 1) * math.radians(cfg.rotate_deg)
        scale = 1 + (torch.rand(g, 3, device=dev) * 2 - 1) * cfg.scale
        shift = (torch.rand(g, 3, device=dev) * 2 - 1) * cfg.translate_vox * size_factor * unit
        theta = torch.cat([_rotation(angles) * scale[:, None, :], shift[:, :, None]], dim=2)
        grid = F.affine_grid(theta[groups].to(x.dtype), list(x.shape), align_corners=False)
        if cfg.elastic_vox > 0:
            coarse = torch.randn(g, 3, cfg.elastic_grid, cfg.elastic_grid, cfg.elastic_grid, device=dev)
            field = F.interpolate(coarse, size=(p, p, p), mode="trilinear", align_corners=True)
            field = field.clamp(-2, 2) / 2 * cfg.elastic_vox * size_factor * unit
            grid = grid + field[groups].permute(0, 2, 3, 4, 1).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandGaussianNoise:
    """Additive Gaussian noise of ``noise_hu`` HU, applied to each group with probability ``p``."""

    def __init__(self, noise_hu: float, p: float) -> None:
        self.sd, self.p = noise_hu / HU_PER_UNIT, p

    def __call__(self, x: Tensor, groups: Tensor) -> Tensor:
        g = int(groups.max()) + 1
        on = (torch.rand(g, device=x.device) < self.p)[groups].to(x.dtype).view(-1, 1, 1, 1, 1)
        return x + on * torch.randn_like(x) * self.sd


class RandAdjustContrast:
    """Gamma contrast change on ``[0, 1]``-rescaled intensities (as MONAI's ``AdjustContrast``), per group."""

    def __init__(self, gamma_range: list[float], p: float) -> None:
        self.low, self.high = gamma_range
        self.p = p

    def __call__(self, x: Tensor, groups: Tensor) -> Tensor:
        g = int(groups.max()) + 1
        gamma = torch.empty(g, device=x.device).uniform_(self.low, self.high)
        gamma = torch.where(torch.rand(g, device=x.device) < self.p, gamma, torch.ones_like(gamma))[groups]
        dims = (1, 2, 3, 4)
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        rng = (hi - lo).clamp_min(1e-6)
        return ((x - lo) / rng).pow(gamma.view(-1, 1, 1, 1, 1).to(x.dtype)) * rng + lo


class PatchAugment:
    """The full view: deformation, then contrast and noise; one random draw per group."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.deform = RandAffineElastic3D(cfg)
        self.contrast = RandAdjustContrast(cfg.gamma_range, cfg.p_contrast)
        self.noise = RandGaussianNoise(cfg.noise_hu, cfg.p_noise)

    def __call__(self, x: Tensor, groups: Tensor | None = None) -> Tensor:
        """``x`` ``[B, 1, P, P, P]`` → augmented ``[B, 1, P, P, P]``."""
        groups = torch.arange(x.shape[0], device=x.device) if groups is None else groups.to(x.device)
        return self.noise(self.contrast(self.deform(x, groups), groups), groups)
