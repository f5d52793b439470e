"""torchvision ResNets as feature encoders ``[B, 3, H, W] → [B, F]``.

For small images (crop ≤ 96 px) the CIFAR stem replaces the 7×7 stride-2
convolution and the max-pool with one 3×3 stride-1 convolution, so a 32-px
image still reaches layer4 at 4×4; 224-px images keep the standard stem.
The classifier ``fc`` is removed: F = 512 (ResNet-18/34), 2048 (ResNet-50+).
"""
from __future__ import annotations

from torch import nn

from copd_ifm.errors import UserError

CIFAR_STEM_MAX_PX = 96


def resolve_stem(stem: str, crop: int) -> str:
    """``auto`` → ``cifar`` for crops up to 96 px, else ``imagenet``."""
    if stem != "auto":
        return stem
    return "cifar" if crop <= CIFAR_STEM_MAX_PX else "imagenet"


def build_backbone(arch: str, stem: str) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ``arch`` with ``stem`` (cifar | imagenet) and no classifier.

    Returns the encoder and its feature width ``F``.
    """
    from torchvision import models  # here, so importing the methods does not pay for torchvision's model zoo

    factory = getattr(models, arch, None)
    if factory is None or not callable(factory):
        raise UserError(f"model.arch {arch!r} is not a torchvision model (e.g. resnet18, resnet50)")
    net = factory(weights=None)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's convs
        net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim
