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
* AdCo (Hu et al., CVPR 2021): MoCo-v2's query and momentum key encoders, but
  the negatives are a learnable bank ``[K, dim]`` trained by gradient *ascent*
  on the contrastive loss with their own rate and temperature
  (:func:`adco_negative_step`).

``project(x)`` of every model is the normalised projection-head output
``z`` ``[B, dim]`` of the query branch: the space the loss compares in.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from copd_ifm.contrastive import MoCo, info_nce_from_similarities, simclr_similarities
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

    def project(self, x: Tensor) -> Tensor:
        """Unit embeddings ``z`` ``[B, dim]`` of images ``[B, 3, H, W]``."""
        return F.normalize(self.head(self.backbone(x)), dim=1)

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

    def project(self, x: Tensor) -> Tensor:
        """Unit query embeddings ``z`` ``[B, dim]`` of images ``[B, 3, H, W]``."""
        return F.normalize(self.moco.encoder_q(x), dim=1)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        out = self.moco((x1,), (x2,))
        return out.pos, out.neg


class AdCo(MoCoV2):
    """``forward(x1, x2)`` → ``pos`` ``[B]`` (query · momentum key) and ``neg`` ``[B, K]`` (query · bank).

    The bank ``negatives`` ``[K, dim]`` is an ``nn.Parameter`` (counted and
    checkpointed) initialised as random unit vectors and normalised on use. It
    has ``requires_grad=False``: the encoder's loss does not reach it and no
    optimiser built from the trainable parameters touches it; only
    :func:`adco_negative_step` moves it. MoCo's queue is not used (kept at one slot).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, n_negatives: int = 4096,
                 momentum: float = 0.99, mlp: bool = True, shuffle_bn: bool = True) -> None:
        super().__init__(backbone, feat_dim, dim=dim, queue_size=1, momentum=momentum, mlp=mlp,
                         shuffle_bn=shuffle_bn)
        self.negatives = nn.Parameter(F.normalize(torch.randn(n_negatives, dim), dim=1), requires_grad=False)
        self.last_query: Tensor | None = None   # [B, dim] queries of the last forward, for the bank's step

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        q = self.project(x1)
        with torch.no_grad():
            self.moco.momentum_update()
            k = self.moco.keys(x2)
        self.last_query = q.detach()
        return (q * k).sum(1), q @ F.normalize(self.negatives, dim=1).T.to(q.dtype)


def adco_negative_step(model: AdCo, pos: Tensor, lr_neg: float, tau_neg: float) -> Tensor:
    """One gradient-ascent step of the bank on InfoNCE at temperature ``tau_neg``; returns that loss.

    ``pos`` ``[N]`` is the last ``model(x1, x2)``'s positive cosines; the queries
    come from that forward (``model.last_query``), so the step may run before or
    after the encoder's backward and optimiser step (the engine loop's
    ``after_step``). Queries and positives are held fixed; the loss
    ``mean −log e^{s⁺/τₙ} / (e^{s⁺/τₙ} + Σₖ e^{q·m̂ₖ/τₙ})`` is differentiated w.r.t. the
    bank only (in the bank's dtype), averaged over ranks under DDP, and the bank moves by
    ``+lr_neg · ∇`` (plain ascent: no momentum, no weight decay).
    """
    if model.last_query is None:
        raise RuntimeError("adco_negative_step needs a forward pass of the model first")
    bank = model.negatives.detach().requires_grad_(True)
    neg = model.last_query.to(bank.dtype) @ F.normalize(bank, dim=1).T  # AMP's float16 queries → the bank's dtype
    loss = info_nce_from_similarities(pos.detach().to(bank.dtype), neg, tau_neg)
    (grad,) = torch.autograd.grad(loss, bank)
    with torch.no_grad():
        model.negatives.add_(D.all_reduce_mean(grad), alpha=lr_neg)
    return loss.detach()


def build_model(cfg: VisionConfig, crop: int) -> SimCLR | MoCoV2 | AdCo:
    """The method of ``cfg`` on a fresh backbone for ``crop``-px training images (AdCo: ``moco`` + ``adco``)."""
    backbone, feat_dim = build_backbone(cfg.model.arch, resolve_stem(cfg.model.stem, crop), cfg.model.width)
    if cfg.method == "simclr":
        return SimCLR(backbone, feat_dim, hidden=cfg.simclr.hidden, dim=cfg.simclr.dim)
    m = cfg.moco
    if cfg.method == "adco":
        return AdCo(backbone, feat_dim, dim=m.dim, n_negatives=cfg.adco.n_negatives, momentum=m.momentum,
                    mlp=m.mlp, shuffle_bn=m.shuffle_bn)
    return MoCoV2(backbone, feat_dim, dim=m.dim, queue_size=m.queue_size, momentum=m.momentum, mlp=m.mlp,
                  shuffle_bn=m.shuffle_bn)
