"""Batched on-device augmentation: each operation against torchvision's, and view statistics against the CPU pipeline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from copd_ifm.errors import UserError
from natural_images import gpu_augment as G
from natural_images.augment import train_transform
from natural_images.config import AugmentConfig, VisionConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(size: int = 32, seed: int = 0) -> np.ndarray:
    """A colourful ``[size, size, 3]`` uint8 test image: gradients plus a bright square and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([200 * xx + 30, 180 * yy + 20, 120 * (1 - xx) + 60], axis=-1)
    img[size // 4:size // 2, size // 4:size // 2] = (250, 240, 40)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def test_colour_operations_match_torchvision_per_image():
    x = torch.from_numpy(np.stack([_image(seed=s) for s in range(4)])).permute(0, 3, 1, 2).float() / 255
    factors = torch.tensor([0.6, 0.9, 1.2, 1.4])
    hues = torch.tensor([-0.1, -0.03, 0.05, 0.1])
    reference = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation, 3: TF.adjust_hue}
    for op, fn in reference.items():
        f = hues if op == 3 else factors
        ours = G._jitter_op(x, op, f)
        theirs = torch.stack([fn(x[i], float(f[i])) for i in range(4)])
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0, msg=f"op {op}")
    torch.testing.assert_close(G.hsv_to_rgb(G.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(G.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_blur_matches_torchvision_per_image_sigma():
    x = torch.from_numpy(np.stack([_image(seed=s) for s in range(3)])).permute(0, 3, 1, 2).float() / 255
    sigma = torch.tensor([0.1, 0.8, 2.0])
    ours = G.gaussian_blur(x, 5, sigma)
    theirs = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(3)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_crop_boxes_follow_torchvision_distribution():
    """Area fraction and aspect ratio of 4000 boxes vs torchvision's own RandomResizedCrop parameters."""
    n, size, scale = 4000, 32, (0.08, 1.0)
    torch.manual_seed(0)
    boxes = G.crop_boxes(n, size, size, scale, torch.device("cpu"), torch.Generator().manual_seed(1))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    rrc = v2.RandomResizedCrop(size, scale=scale)
    image = torch.zeros(3, size, size)
    ref = [rrc.make_params([image]) for _ in range(n)]
    ref_area = np.array([p["height"] * p["width"] for p in ref]) / size ** 2
    ref_ratio = np.log([p["width"] / p["height"] for p in ref])
    area, ratio = (h * w / size ** 2).numpy(), torch.log(w / h).numpy()
    # standard errors of a mean of 4000 draws: area sd ≈ 0.27 → 0.004; 4 of them is the tolerance
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(area.std() - ref_area.std()) < 0.02
    assert abs(ratio.mean() - ref_ratio.mean()) < 0.01 and abs(ratio.std() - ref_ratio.std()) < 0.01
    np.testing.assert_allclose(np.quantile(area, [0.1, 0.5, 0.9]), np.quantile(ref_area, [0.1, 0.5, 0.9]), atol=0.03)


def _view_stats(views: torch.Tensor) -> dict[str, np.ndarray]:
    """Per view ``[N, 3, H, W]`` (0–1): mean brightness, contrast (sd of luma), gray or not, edge strength."""
    luma = G.grayscale(views)[:, 0]
    return {"brightness": luma.mean(dim=(1, 2)).numpy(), "contrast": luma.std(dim=(1, 2)).numpy(),
            "gray": ((views.amax(1) - views.amin(1)).amax(dim=(1, 2)) < 1e-3).numpy(),
            "edges": (luma[:, :, 1:] - luma[:, :, :-1]).abs().mean(dim=(1, 2)).numpy()}


def _cpu_views(aug: AugmentConfig, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    transform = train_transform(aug, "simclr", 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    image = Image.fromarray(_image())
    return torch.stack([transform(image) for _ in range(n)])


def _batched_views(aug: AugmentConfig, n: int) -> torch.Tensor:
    batch = torch.from_numpy(_image()).permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    augment = G.BatchAugment(aug, "simclr", 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return augment(batch, torch.Generator().manual_seed(2))


def test_batched_views_have_the_statistics_of_the_torchvision_pipeline():
    n = 1000
    cpu, ours = _view_stats(_cpu_views(AugmentConfig(), n)), _view_stats(_batched_views(AugmentConfig(), n))
    for key in ("brightness", "contrast", "edges"):
        # tolerance: 4 standard errors of the difference of two means of n draws, and 10 % for the sd
        se = math.sqrt(cpu[key].var() / n + ours[key].var() / n)
        assert abs(cpu[key].mean() - ours[key].mean()) < 4 * se, key
        assert abs(cpu[key].std() - ours[key].std()) < 0.1 * cpu[key].std(), key
    assert abs(cpu["gray"].mean() - 0.2) < 0.035 and abs(ours["gray"].mean() - 0.2) < 0.035
    # the comparison can fail: without blur the batched edges lie well outside the 4-se band (≈ 8 se at n = 1000)
    sharp = _view_stats(_batched_views(AugmentConfig(blur_prob=0.0), n))["edges"]
    assert abs(cpu["edges"].mean() - sharp.mean()) > 6 * math.sqrt(cpu["edges"].var() / n + sharp.var() / n)


def test_two_views_shapes_determinism_and_device_choice():
    config = VisionConfig()
    config.data.dataset, config.data.crop_size = "cifar10", 24
    augment = G.build_batch_augment(config)
    raw = torch.from_numpy(np.stack([_image(seed=s) for s in range(5)])).permute(0, 3, 1, 2)
    v1, v2_ = augment.two_views(raw, torch.Generator().manual_seed(0))
    assert v1.shape == v2_.shape == (5, 3, 24, 24) and v1.dtype == torch.float32 and not torch.equal(v1, v2_)
    again = augment.two_views(raw, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], v1) and torch.equal(again[1], v2_)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not G.augment_on_device(config, cpu) and G.augment_on_device(config, cuda)
    config.augment.device = "cpu"
    assert not G.augment_on_device(config, cuda)
    config.augment.device = "gpu"
    assert G.augment_on_device(config, cpu)
    config.data.dataset = "imagenet100"
    with pytest.raises(UserError, match="augment.device gpu needs an in-memory dataset"):
        G.augment_on_device(config, cuda)
    config.augment.device = "auto"
    assert not G.augment_on_device(config, cuda)


def test_dataset_images_stacks_raw_pixels_and_refuses_mixed_sizes():
    pixels = [_image(seed=s) for s in range(3)]
    items = [(Image.fromarray(p), s) for s, p in enumerate(pixels)]
    images = G.dataset_images(items)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert np.array_equal(images[2].permute(1, 2, 0).numpy(), pixels[2])
    items.append((Image.fromarray(_image(size=16)), 3))
    with pytest.raises(UserError, match="image 3 is 16x16 px, image 0 32x32"):
        G.dataset_images(items)


def test_accelerator_path_without_row_selection_gives_the_same_views(monkeypatch):
    """On a GPU every op runs on the whole batch and is kept where drawn (no data-dependent shapes, so no
    device→host wait); forced here on the CPU, the views equal those of the row-selecting CPU path."""
    images = torch.randint(0, 256, (24, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = G.BatchAugment(AugmentConfig(), "simclr", 16, (0.5,) * 3, (0.25,) * 3)
    selected = augment(images, torch.Generator().manual_seed(1))
    whole = G._apply_to_rows
    monkeypatch.setattr(G, "_apply_to_rows", lambda *args: whole(*args, select=False))
    assert torch.equal(augment(images, torch.Generator().manual_seed(1)), selected)
