"""The official linear protocol (``linear.augment``): new augmented views every epoch through the frozen
encoder, MoCo ``main_lincls.py``'s schedule and initialisation; the cached mode stays the default."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from copd_ifm import config as cfg
from copd_ifm.contrastive.optim import OptimConfig
from natural_images.augment import eval_transform, linear_train_transform
from natural_images.config import LinearConfig
from natural_images.run import load_vision_config
from natural_images.linear import fit_linear, fit_linear_augmented, linear_readout

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class _Images(Dataset):
    """Six random 16-px RGB PIL images, two classes, through ``transform``."""

    def __init__(self, transform) -> None:
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
        self.targets = [i % 2 for i in range(6)]
        self.transform = transform

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.targets[i]


class _Recorder(nn.Module):
    """Mean-pooled colour channels (a frozen 'encoder' with one parameter); records every input batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), self.training))
        return x.mean((2, 3)) * self.scale


def _official(epochs: int = 6, lr: float = 10.0) -> LinearConfig:
    return LinearConfig(epochs=epochs, batch_size=4, milestones=[3, 4, 5], augment=True,
                        optim=OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=0.0))


def test_augmented_readout_sees_new_views_every_epoch_through_the_frozen_encoder_in_eval_mode():
    encoder = _Recorder().train()
    images = _Images(linear_train_transform(12, MEAN, STD))
    _, history = fit_linear_augmented(encoder, images, 0, 2, 3, _official(epochs=2), torch.device("cpu"))
    assert len(history) == 2 and all(not training for _, training in encoder.seen) and encoder.training
    assert [x.shape[0] for x, _ in encoder.seen] == [4, 2, 4, 2]  # ceil(6 / 4) batches per epoch, every image
    assert encoder.scale.grad is None and torch.equal(encoder.scale, torch.ones(3))
    first, second = torch.cat([x for x, _ in encoder.seen[:2]]), torch.cat([x for x, _ in encoder.seen[2:]])
    assert first.shape[1:] == (3, 12, 12)
    # the sampler's order differs by epoch, so compare the sets of views: no view repeats across epochs
    assert not any(torch.allclose(a, b) for a in first for b in second)
    plain = torch.stack([_Images(eval_transform(12, 1.0, MEAN, STD))[i][0] for i in range(6)])
    assert not any(torch.allclose(a, b) for a in first for b in plain)


def test_augmented_readout_follows_the_official_step_schedule_and_initialisation():
    _, history = fit_linear_augmented(_Recorder(), _Images(linear_train_transform(12, MEAN, STD)), 0, 2, 3,
                                      _official(), torch.device("cpu"), seed=3)
    assert [h["lr"] for h in history] == pytest.approx([10, 10, 10, 1, 0.1, 0.01])  # ×0.1 after epochs 3, 4, 5
    frozen, _ = fit_linear_augmented(_Recorder(), _Images(linear_train_transform(12, MEAN, STD)), 0, 2, 3,
                                     _official(epochs=1, lr=1e-30), torch.device("cpu"), seed=3)
    expected = torch.randn((2, 3), generator=torch.Generator().manual_seed(3)) * 0.01  # N(0, 0.01²)
    assert torch.allclose(frozen.weight, expected, atol=1e-20) and frozen.bias.abs().max() < 1e-20  # zero bias
    # the cached mode shares init and schedule
    x, y = torch.randn(6, 3), torch.tensor([0, 1] * 3)
    layer, cached = fit_linear(x, y, 2, cfg.from_dict(LinearConfig, {**cfg.to_dict(_official()), "augment": False}),
                               seed=3)
    assert [h["lr"] for h in cached] == pytest.approx([10, 10, 10, 1, 0.1, 0.01])


def test_imagenet100_configs_use_the_official_readout_and_small_studies_keep_the_cache(tmp_path):
    for name in ("imagenet100_moco", "imagenet100_adco"):
        lin = load_vision_config(name).linear
        assert lin.augment and (lin.epochs, lin.batch_size, lin.milestones) == (60, 128, [30, 40, 50])
        assert (lin.optim.name, lin.optim.lr, lin.optim.momentum, lin.optim.weight_decay) == ("sgd", 10.0, 0.9, 0)
    assert not load_vision_config("cifar10_moco").linear.augment and not LinearConfig().augment
    with pytest.raises(Exception, match="exclude each other"):
        cfg.from_dict(LinearConfig, {"augment": True, "standardize": True})


def test_readout_mode_is_named_in_linear_json_and_summary(tmp_path):
    from tests.vision.test_datasets import write_cifar10
    from natural_images.train import pretrain

    write_cifar10(tmp_path / "data")
    items = [f"data.root={tmp_path / 'data'}", "data.verify=false", "data.crop_size=8", "data.eval_size=8",
             "knn.every=0", "epochs=1", "linear.epochs=2", "linear.batch_size=8"]
    pretrain(load_vision_config("cpu_tiny", overrides=items), tmp_path / "run", device="cpu")
    augmented = cfg.from_dict(LinearConfig, {**cfg.to_dict(load_vision_config("cpu_tiny", overrides=items).linear),
                                             "augment": True})
    result = linear_readout(tmp_path / "run", linear=augmented, device="cpu")
    assert result["readout"].startswith("augmented images") and result["train_size"] == 20
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["linear_readout"]["cifar10"].startswith("augmented images")
    linear_readout(tmp_path / "run", device="cpu")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["linear_readout"]["cifar10"].startswith("cached features")
