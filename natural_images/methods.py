"""SimCLR and MoCo-v2 models that return cosine similarities for the shared IFM losses.

Both take two augmented views ``x1, x2`` ``[B, 3, H, W]`` and return
``(pos, neg)``: ``pos`` ``[N]`` query·positive and ``neg`` ``[N, K]``
query·negatives, before the temperature, so
:class:`copd_ifm.contrastive.ContrastiveLoss` applies InfoNCE, IFM or the
hard-negative objective without a second forward pass.

* SimCLR: backbone → head ``F → hidden (BN, ReLU) → dim`` (the hard-negative
  code's 2048-512-128). Under DDP the embeddings of every rank are gathered
  with gradients, so each anchor sees the ``2·B_global − 2`` in-batch
  negatives and the gradient equals the single-process one.
* MoCo-v2: :class:`copd_ifm.contrastive.MoCo` (momentum key encoder, queue,
  shuffle-BN), queries from ``x1``, keys from ``x2``.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from copd_ifm.contrastive import MoCo, simclr_similarities
from copd_ifm.contrastive import distributed as D
from natural_images.backbones import build_backbone, resolve_stem
from natural_images.config import VisionConfig


def simclr_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """``Linear(no bias) → BatchNorm → ReLU → Linear``: ``[B, in_dim] → [B, out_dim]``."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class SimCLR(nn.Module):
    """``forward(x1, x2)`` → ``pos`` ``[2N]``, ``neg`` ``[2N, 2N − 2]`` over the global batch of ``N`` images."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden: int = 512, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = simclr_head(feat_dim, hidden, dim)

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def embed(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Head outputs ``[B, dim]`` of both views; one pass, so BatchNorm sees both views together."""
        z = self.head(self.backbone(torch.cat([x1, x2])))
        return z.chunk(2)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = self.embed(x1, x2)
        return simclr_similarities(D.all_gather_with_grad(z1), D.all_gather_with_grad(z2))


class MoCoV2(nn.Module):
    """``forward(x1, x2)`` → ``pos`` ``[B]`` and ``neg`` ``[B, K]`` against the queue; then enqueues the keys."""

    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.99, mlp: bool = True, shuffle_bn: bool = True) -> None:
        super().__init__()
        self.moco = MoCo(backbone, feat_dim, dim=dim, queue_size=queue_size, momentum=momentum, mlp=mlp,
                         shuffle_bn=shuffle_bn)

    @property
    def encoder(self) -> nn.Module:
        return self.moco.encoder_q.encoder

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        out = self.moco((x1,), (x2,))
        return out.pos, out.neg


def build_model(cfg: VisionConfig, crop: int) -> SimCLR | MoCoV2:
    """The method of ``cfg`` on a fresh backbone for ``crop``-px training images."""
    backbone, feat_dim = build_backbone(cfg.model.arch, resolve_stem(cfg.model.stem, crop), cfg.model.width)
    if cfg.method == "simclr":
        return SimCLR(backbone, feat_dim, hidden=cfg.simclr.hidden, dim=cfg.simclr.dim)
    m = cfg.moco
    return MoCoV2(backbone, feat_dim, dim=m.dim, queue_size=m.queue_size, momentum=m.momentum, mlp=m.mlp,
                  shuffle_bn=m.shuffle_bn)
