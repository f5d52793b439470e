"""torchvision ResNets as feature encoders ``[B, 3, H, W] → [B, F]``, optionally narrowed by a width multiplier.

For small images (crop ≤ 96 px) the CIFAR stem replaces the 7×7 stride-2
convolution and the max-pool with one 3×3 stride-1 convolution, so a 32-px
image still reaches layer4 at 4×4; 224-px images keep the standard stem.
The classifier ``fc`` is removed: F = 512·w (ResNet-18/34), 2048·w (ResNet-50+),
where ``w`` is the width multiplier: every stage has ``round(64·w)``,
``round(128·w)``, ... base channels (``w = 0.25``: 16 in the stem and layer1,
128 features), the depth is unchanged. A convolution costs ∝ w², so a
width-0.25 network needs about 1/16 of the multiply-adds.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import ResNet

from copd_ifm.errors import UserError

CIFAR_STEM_MAX_PX = 96


def resolve_stem(stem: str, crop: int) -> str:
    """``auto`` → ``cifar`` for crops up to 96 px, else ``imagenet``."""
    if stem != "auto":
        return stem
    return "cifar" if crop <= CIFAR_STEM_MAX_PX else "imagenet"


def scaled_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 1."""
    return max(1, round(channels * width))


class NarrowResNet(ResNet):
    """torchvision's :class:`ResNet` with every stage's planes multiplied by ``width``.

    ``block``, ``layers`` and ``kwargs`` (groups, width_per_group) are those of a
    torchvision factory; torchvision's own initialisation applies.
    """

    def __init__(self, block: Any, layers: list[int], width: float, **kwargs: Any) -> None:
        self.width = width
        self._stage = 0
        super().__init__(block, layers, **kwargs)
        stem = scaled_channels(64, width)
        # ResNet.__init__ builds a 64-channel stem before the stages; replace it with the narrow one.
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(stem)
        self.fc = nn.Linear(scaled_channels(512, width) * block.expansion, self.fc.out_features)

    def _make_layer(self, block: Any, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if self._stage == 0:
            self.inplanes = scaled_channels(64, self.width)   # the stem's output feeds layer1
        self._stage += 1
        return super()._make_layer(block, scaled_channels(planes, self.width), blocks, stride, dilate)


def _narrow(net: ResNet, width: float) -> ResNet:
    """A fresh :class:`NarrowResNet` with the block type, depth and grouping of ``net``."""
    layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    block = type(net.layer1[0])
    return NarrowResNet(block, layers, width, groups=net.groups, width_per_group=net.base_width)


def build_backbone(arch: str, stem: str, width: float = 1.0) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ``arch`` with ``stem`` (cifar | imagenet), ``width`` × channels, no classifier.

    Returns the encoder and its feature width ``F``.
    """
    from torchvision import models  # here, so importing the methods does not pay for torchvision's model zoo

    factory = getattr(models, arch, None)
    if factory is None or not callable(factory):
        raise UserError(f"model.arch {arch!r} is not a torchvision model (e.g. resnet18, resnet50)")
    net = factory(weights=None)
    if width != 1.0:
        net = _narrow(net, width)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's convs
        net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim
