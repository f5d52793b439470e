"""Batched augmentations against MONAI's transforms at the anchor's settings, and their per-group draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.layers import GaussianFilter
from monai.transforms import Rand3DElastic

from copd_ifm.context.augment import (HU_PER_UNIT, PatchAugment, RandAdjustContrast, RandAffineElastic3D,
                                      RandGaussianNoise, elastic_field, gaussian_matrices)
from copd_ifm.context.config import AugmentConfig

ELASTIC_ONLY = dict(rotate_deg=0.0, scale=0.0, translate_vox=0.0, p_noise=0.0, p_contrast=0.0)


def _ramp(p: int) -> torch.Tensor:
    """``[3, P, P, P]``: channel c holds each voxel's index along spatial axis c."""
    return torch.stack(torch.meshgrid(*[torch.arange(p, dtype=torch.float32)] * 3, indexing="ij"))


def _stats(displacements: list[torch.Tensor]) -> tuple[float, float]:
    """Median |displacement| over all voxels and draws, and the median over draws of the largest |component|."""
    norms = torch.cat([d.norm(dim=0).flatten() for d in displacements])
    return float(norms.median()), float(np.median([float(d.abs().max()) for d in displacements]))


def _ours(p: int, cfg: AugmentConfig, draws: int) -> list[torch.Tensor]:
    """Our displacements measured as MONAI's are: deform the index ramps (bilinear reproduces a linear ramp)."""
    ramp = _ramp(p)
    x = ramp[:, None].repeat(draws, 1, 1, 1, 1)                       # [3·draws, 1, P, P, P], 3 per group
    out = RandAffineElastic3D(cfg)(x, torch.arange(draws).repeat_interleave(3))
    return [out[3 * i:3 * i + 3, 0] - ramp for i in range(draws)]


@pytest.mark.parametrize("sigma", [2.3, 9.7])
def test_field_smoothing_is_monai_gaussian_filter(sigma):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32, 32) * 2 - 1
    m = gaussian_matrices(torch.tensor([sigma]), 32)[0]
    ours = torch.einsum("ij,cjkl->cikl", m, x[0])
    ours = torch.einsum("kj,cijl->cikl", m, ours)
    ours = torch.einsum("lj,cikj->cikl", m, ours)
    torch.testing.assert_close(ours, GaussianFilter(3, sigma, 3.0)(x)[0], atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_elastic_displacement_matches_monai_rand3delastic():
    # The anchor's σ 8–12 at the top of its magnitude range (1264), where MONAI gives ≈ 3.7 voxels
    # median and ≈ 6.4 largest component at 32³; the magnitude draw itself is a plain uniform.
    monai = Rand3DElastic(sigma_range=(8, 12), magnitude_range=(1264, 1264), prob=1.0, mode="bilinear",
                          padding_mode="border")
    monai.set_random_state(0)
    ramp = _ramp(32)
    theirs = [torch.as_tensor(monai(ramp)) - ramp for _ in range(32)]
    torch.manual_seed(0)
    ours = _ours(32, AugmentConfig(elastic_magnitude=[1264.0, 1264.0], **ELASTIC_ONLY), 128)
    (med_t, max_t), (med_o, max_o) = _stats(theirs), _stats(ours)
    assert 3.0 < med_t < 4.5 and 5.0 < max_t < 8.0                      # the figures quoted for MONAI
    # One draw's median and largest component vary by ≈ 25 % and 35 % (sd/mean; σ and a field with few
    # independent blobs), so with 32 and 128 draws the two estimates differ by ≈ 5 % and 7 % (1 sd).
    assert med_o == pytest.approx(med_t, rel=0.15) and max_o == pytest.approx(max_t, rel=0.2)


def test_elastic_field_scales_with_patch_size():
    cfg = AugmentConfig(elastic_magnitude=[1264.0, 1264.0])
    torch.manual_seed(1)
    med32 = float(elastic_field(128, 32, cfg, torch.device("cpu")).norm(dim=1).median())
    med16 = float(elastic_field(512, 16, cfg, torch.device("cpu")).norm(dim=1).median())
    assert med16 == pytest.approx(med32 / 2, rel=0.08)                 # same displacement in mm at 2 mm voxels


def test_zero_augmentation_is_identity():
    cfg = AugmentConfig(rotate_deg=0, scale=0, translate_vox=0, elastic_magnitude=[0, 0], p_noise=0, p_contrast=0)
    x = torch.randn(3, 1, 8, 8, 8)
    assert torch.allclose(PatchAugment(cfg)(x), x, atol=1e-5)


def test_group_shares_one_deformation():
    cfg = AugmentConfig(p_noise=0, p_contrast=0)
    x = torch.randn(1, 1, 8, 8, 8).repeat(4, 1, 1, 1, 1)
    torch.manual_seed(0)
    out = RandAffineElastic3D(cfg)(x, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[2], out[3])
    assert not torch.allclose(out[0], out[2])


def test_any_group_order_gives_the_same_deformation():
    x = torch.randn(4, 1, 8, 8, 8)
    torch.manual_seed(3)
    blocks = RandAffineElastic3D(AugmentConfig())(x, torch.tensor([0, 0, 1, 1]))       # subject-view layout
    torch.manual_seed(3)
    order = torch.tensor([0, 2, 1, 3])
    mixed = RandAffineElastic3D(AugmentConfig())(x[order], torch.tensor([0, 1, 0, 1]))  # per-patch grids
    torch.testing.assert_close(mixed, blocks[order])


def test_contrast_uses_the_group_range_and_one_gamma():
    a = torch.linspace(0, 1, 64).view(1, 1, 4, 4, 4)
    b = 0.2 + 0.3 * torch.rand(1, 1, 4, 4, 4)
    c = 0.2 + 0.3 * torch.rand(1, 1, 4, 4, 4)
    x = torch.cat([a, b, c]) * 2 - 1                                   # network units, group range [-1, 1]
    out = RandAdjustContrast([2.0, 2.0], p=1.0)(x, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(out[:2], ((x[:2] + 1) / 2) ** 2 * 2 - 1)        # subject range, not per patch
    lo, hi = x[2].min(), x[2].max()
    torch.testing.assert_close(out[2], ((x[2] - lo) / (hi - lo)) ** 2 * (hi - lo) + lo)


def test_noise_sd_is_drawn_per_group_up_to_the_maximum():
    torch.manual_seed(0)
    groups = torch.arange(200).repeat_interleave(2)
    out = RandGaussianNoise(50.0, p=1.0)(torch.zeros(400, 1, 16, 16, 16), groups)
    sd = out.flatten(1).std(1) * HU_PER_UNIT                          # per patch, HU
    pair = sd.view(200, 2)
    assert torch.allclose(pair[:, 0], pair[:, 1], rtol=0.1, atol=0.5)  # one sd per group
    assert sd.max() < 50.5 and sd.min() < 2.5
    assert float(pair[:, 0].mean()) == pytest.approx(25.0, rel=0.1)     # U(0, 50): mean 25 HU


def test_view_order_is_contrast_noise_then_deformation():
    aug = PatchAugment(AugmentConfig())
    calls: list[str] = []

    def record(name):
        def step(x, groups):
            calls.append(name)
            return x
        return step

    aug.contrast, aug.noise, aug.deform = record("contrast"), record("noise"), record("deform")
    aug(torch.zeros(2, 1, 4, 4, 4))
    assert calls == ["contrast", "noise", "deform"]
