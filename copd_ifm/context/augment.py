"""Batched 3-D augmentations of CT patches with the anchor's MONAI settings, on whatever device the batch is on.

The anchor applies ``RandAdjustContrast`` (p 0.25, γ ~ U(0.5, 4.5)),
``RandGaussianNoise`` (p 0.25, sd ~ U(0, 50 HU)) and then ``Rand3DElastic``
(σ 8–12, magnitude 0–1264, rotation π/18, scale 0.1, translation 12 voxels,
border padding) to one patch at a time; MONAI's elastic resampling alone
takes ≈ 23 ms per 32³ patch on a CPU core, slower than the encoder. Here the
random parameters are drawn per *group* of patches and a whole batch
``[B, 1, P, P, P]`` is deformed with one batched field smoothing and one
``grid_sample``. A group is one patch (patch level) or one subject view
(graph level: all its patches share one contrast draw, with the subject's
intensity range, one noise level and one deformation, as the anchor's
subject tensor of 581 channels does). Intensities are network units,
``(HU + 1024)/632 − 1``; the gamma change is invariant to that affine rescaling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from copd_ifm.context.config import AugmentConfig

HU_PER_UNIT = 632.0  # network unit = 632 HU
REFERENCE_SIZE = 32  # config lengths are voxels of a 32³ patch (the anchor's 1 mm cube)


def _rotation(angles: Tensor) -> Tensor:
    """Rotation matrices ``[G, 3, 3]`` from Euler angles ``[G, 3]`` (radians, x-y-z)."""
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


Groups = Tensor | int


def group_layout(x: Tensor, groups: Groups | None) -> tuple[Tensor, int, int]:
    """``(groups [B] long, G, k)`` of a batch ``x`` ``[B, ...]``; ``k > 0`` when the groups are ``G``
    consecutive runs of ``k`` patches (else 0).

    ``groups`` is an int ``k`` (consecutive runs of ``k`` patches: what the steps pass, read without a
    device→host sync), a ``[B]`` tensor of ids in ``[0, G)`` (any layout; ``G`` and the layout are read
    back from the device), or None (one group per patch).
    """
    b = x.shape[0]
    if groups is None or isinstance(groups, int):
        k = groups or 1
        if b % k:
            raise ValueError(f"a batch of {b} patches is not whole groups of {k}")
        return torch.arange(b // k, device=x.device).repeat_interleave(k), b // k, k
    groups = groups.to(x.device)
    g = int(groups.max()) + 1
    k = b // g
    consecutive = b == g * k and torch.equal(groups, torch.arange(g, device=x.device).repeat_interleave(k))
    return groups, g, k if consecutive else 0


def _uniform(n: int, bounds: list[float], device: torch.device) -> Tensor:
    return torch.empty(n, device=device).uniform_(bounds[0], bounds[1])


def gaussian_matrices(sigma: Tensor, size: int, truncated: float = 3.0) -> Tensor:
    """``[G, size, size]`` matrices that smooth one axis with MONAI's ``GaussianFilter(σ, truncated)``.

    The kernel is MONAI's ``gaussian_1d`` with the erf approximation (the mass of
    N(0, σ²) over each voxel), cut at ``⌊max(σ·truncated, 0.5) + 0.5⌋`` voxels; zero
    padding at the borders, so the convolution of a length-``size`` axis is this
    banded Toeplitz matrix. ``sigma`` ``[G]`` in voxels.
    """
    idx = torch.arange(size, device=sigma.device, dtype=torch.float32)
    d = (idx[:, None] - idx[None, :])[None]                               # [1, size, size]
    s = sigma.float().view(-1, 1, 1) * math.sqrt(2.0)
    kernel = 0.5 * (torch.erf((d + 0.5) / s) - torch.erf((d - 0.5) / s))
    tail = torch.floor((sigma.float() * truncated).clamp_min(0.5) + 0.5).view(-1, 1, 1)
    return kernel * (d.abs() <= tail)


def elastic_field(n: int, size: int, cfg: AugmentConfig, device: torch.device) -> Tensor:
    """``n`` random displacement fields ``[n, 3, P, P, P]`` in voxels of ``P = size``, distributed as Rand3DElastic's.

    At ``P = 32``: uniform(−1, 1) offsets smoothed by a Gaussian of σ ~ U(elastic_sigma)
    (separable, zero padding) times magnitude ~ U(elastic_magnitude), as MONAI does.
    At another ``P`` the field is the same one in mm: σ scales by ``f = P/32`` and,
    since smoothing white noise of unit variance with σ leaves an sd ∝ σ^(−3/2),
    the magnitude by ``f · f^(3/2)``, so displacements are ``f`` times the 32³ ones.
    """
    f = size / REFERENCE_SIZE
    sigma = _uniform(n, cfg.elastic_sigma, device) * f
    magnitude = _uniform(n, cfg.elastic_magnitude, device) * f ** 2.5
    m = gaussian_matrices(sigma, size)
    x = torch.rand(n, 3, size, size, size, device=device) * 2 - 1
    x = torch.einsum("gij,gcjkl->gcikl", m, x)
    x = torch.einsum("gkj,gcijl->gcikl", m, x)
    x = torch.einsum("glj,gcikj->gcikl", m, x)
    return x * magnitude.view(-1, 1, 1, 1, 1)


class RandAffineElastic3D:
    """Rand3DElastic batched: elastic offsets, then scale, translation and rotation, one draw per group.

    As MONAI, a sampling point is ``R · (S · (p + offset) + t)`` with ``p`` the voxel
    centre relative to the patch centre; bilinear sampling with border padding.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: Tensor, groups: Groups | None = None) -> Tensor:
        """``x`` ``[B, 1, P, P, P]``; ``groups`` as in :func:`group_layout` (default: one group per patch)."""
        p = x.shape[-1]
        groups, g, k = group_layout(x, groups)
        cfg, dev = self.cfg, x.device
        unit = 2.0 / p  # one voxel in normalised [-1, 1] coordinates (align_corners=False)
        angles = (torch.rand(g, 3, device=dev) * 2 - 1) * math.radians(cfg.rotate_deg)
        scale = 1 + (torch.rand(g, 3, device=dev) * 2 - 1) * cfg.scale
        shift = (torch.rand(g, 3, device=dev) * 2 - 1) * cfg.translate_vox * (p / REFERENCE_SIZE) * unit
        identity = torch.eye(3, 4, device=dev).expand(g, 3, 4)
        points = F.affine_grid(identity, [g, 1, p, p, p], align_corners=False)         # [G, P, P, P, 3]
        if cfg.elastic_magnitude[1] > 0:
            points = points + elastic_field(g, p, cfg, dev).permute(0, 2, 3, 4, 1) * unit
        rot = _rotation(angles)
        linear = rot * scale[:, None, :]                                                 # R · S
        offset = (rot @ shift[:, :, None]).view(g, 1, 1, 1, 3)                           # R · t
        grid = torch.einsum("gijkc,gdc->gijkd", points, linear).add_(offset).to(x.dtype)
        if k:
            # Equal consecutive groups (a batch of subject views): their patches become channels of one
            # image per group, as in the anchor's subject tensor, so the grid is not copied per patch.
            out = F.grid_sample(x.reshape(g, k * x.shape[1], p, p, p), grid, mode="bilinear",
                                padding_mode="border", align_corners=False)
            return out.view_as(x)
        return F.grid_sample(x, grid[groups], mode="bilinear", padding_mode="border", align_corners=False)


def _group_draw(groups: Tensor, p: float, values: Tensor, neutral: float) -> Tensor:
    """Per-group ``values`` ``[G]`` kept with probability ``p`` (else ``neutral``), per patch ``[B, 1, 1, 1, 1]``."""
    on = torch.rand(values.shape[0], device=values.device) < p
    return torch.where(on, values, torch.full_like(values, neutral))[groups].view(-1, 1, 1, 1, 1)


class RandGaussianNoise:
    """MONAI's RandGaussianNoise(sample_std=True): per group with probability ``p``, sd ~ U(0, ``noise_hu``) HU."""

    def __init__(self, noise_hu: float, p: float) -> None:
        self.max_sd, self.p = noise_hu / HU_PER_UNIT, p

    def __call__(self, x: Tensor, groups: Groups | None = None) -> Tensor:
        groups, g, _ = group_layout(x, groups)
        sd = _group_draw(groups, self.p, torch.rand(g, device=x.device) * self.max_sd, 0.0)
        return x + sd.to(x.dtype) * torch.randn_like(x)


class RandAdjustContrast:
    """MONAI's RandAdjustContrast: ``((x − min)/range)^γ · range + min``, γ ~ U(gamma_range) with probability ``p``.

    ``min`` and ``range`` are over the whole group (a subject view's patches
    share them, as in the anchor's one multi-channel subject image).
    """

    def __init__(self, gamma_range: list[float], p: float) -> None:
        self.gamma_range, self.p = gamma_range, p

    def __call__(self, x: Tensor, groups: Groups | None = None) -> Tensor:
        groups, g, _ = group_layout(x, groups)
        gamma = _group_draw(groups, self.p, _uniform(g, self.gamma_range, x.device), 1.0)
        flat = x.flatten(1)
        lo = torch.full((g,), math.inf, device=x.device, dtype=x.dtype).scatter_reduce(
            0, groups, flat.amin(1), "amin")[groups].view(-1, 1, 1, 1, 1)
        hi = torch.full((g,), -math.inf, device=x.device, dtype=x.dtype).scatter_reduce(
            0, groups, flat.amax(1), "amax")[groups].view(-1, 1, 1, 1, 1)
        rng = (hi - lo).clamp_min(1e-6)
        return ((x - lo) / rng).pow(gamma.to(x.dtype)) * rng + lo


class PatchAugment:
    """The full view in the anchor's order: contrast, noise, then the deformation; one draw per group."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.contrast = RandAdjustContrast(cfg.gamma_range, cfg.p_contrast)
        self.noise = RandGaussianNoise(cfg.noise_hu, cfg.p_noise)
        self.deform = RandAffineElastic3D(cfg)

    def __call__(self, x: Tensor, groups: Groups | None = None) -> Tensor:
        """``x`` ``[B, 1, P, P, P]`` → augmented ``[B, 1, P, P, P]``; ``groups`` as in :func:`group_layout`."""
        return self.deform(self.noise(self.contrast(x, groups), groups), groups)
