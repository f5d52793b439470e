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
* AdCo (Hu et al., CVPR 2021) as ``maple-research-lab/AdCo`` runs it: MoCo-v2's
  query and momentum key encoders; the negatives are the other (gathered) keys
  of the batch and a learnable bank ``[K, dim]``, first filled with keys while
  the encoder trains (``ad_init``, :func:`adco_fill_bank`), then trained by
  SGD with momentum and weight decay on *minus* the contrastive loss at its own
  temperature (:func:`adco_negative_step`).

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
    """``forward(x1, x2)`` → ``pos`` ``[B]`` (query · own momentum key) and ``neg`` ``[B, W·B − 1 + K]``.

    The negatives of a query are, as in the official ``update_network``, the other keys of the batch gathered
    from all ``W`` ranks (first ``W·B − 1`` columns) and the bank rows, normalised on use (last ``K``).
    The bank ``negatives`` ``[K, dim]`` (the official ``W`` transposed) is an ``nn.Parameter``
    (counted, checkpointed) with ``requires_grad=False``: the encoder's optimiser never sees it; only
    :func:`adco_fill_bank` (the ``ad_init`` warm-up) and :func:`adco_negative_step` move it.
    ``bank_velocity`` is its SGD momentum buffer and ``bank_filled`` the rows written by the warm-up
    (``K`` when there is none). ``forward(x1, x2, warmup=True)`` is the official ``init_memory`` step: the
    bank is the only negatives (no in-batch keys). MoCo's queue is not used (kept at one slot).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, dim: int = 128, n_negatives: int = 65536,
                 momentum: float = 0.999, mlp: bool = True, shuffle_bn: bool = True, ad_init: bool = True) -> None:
        super().__init__(backbone, feat_dim, dim=dim, queue_size=1, momentum=momentum, mlp=mlp,
                         shuffle_bn=shuffle_bn)
        # Gaussian rows as the official Adversary_Negatives (not unit: the norm scales the bank's gradient).
        self.negatives = nn.Parameter(torch.randn(n_negatives, dim), requires_grad=False)
        self.register_buffer("bank_velocity", torch.zeros(n_negatives, dim))
        self.register_buffer("bank_filled", torch.tensor(0 if ad_init else n_negatives))
        self.last_query: Tensor | None = None   # [B, dim] queries of the last forward, for the bank's step
        self.last_keys: Tensor | None = None    # [W·B, dim] keys of the last forward gathered over ranks

    @property
    def bank_size(self) -> int:
        return self.negatives.shape[0]

    def forward(self, x1: Tensor, x2: Tensor, warmup: bool = False) -> tuple[Tensor, Tensor]:
        q = self.project(x1)
        with torch.no_grad():
            self.moco.momentum_update()
            k = self.moco.keys(x2)
            keys = D.all_gather_no_grad(k)
        self.last_query, self.last_keys = q.detach(), keys
        bank = q @ F.normalize(self.negatives, dim=1).T.to(q.dtype)
        if warmup:
            return (q * k).sum(1), bank
        return (q * k).sum(1), torch.cat([_other_keys(q, keys), bank], 1)


def _other_keys(q: Tensor, keys: Tensor) -> Tensor:
    """``q`` ``[B, dim]`` · the gathered keys ``[W·B, dim]`` except each query's own (column ``rank·B + i``)."""
    b = q.shape[0]
    sim = q @ keys.T.to(q.dtype)
    own = torch.arange(b, device=q.device) + D.rank() * b
    keep = torch.ones_like(sim, dtype=torch.bool)
    keep[torch.arange(b, device=q.device), own] = False
    return sim[keep].view(b, keys.shape[0] - 1)


@torch.no_grad()
def adco_fill_bank(model: AdCo) -> None:
    """``ad_init``: write the last forward's gathered keys into the next empty bank rows (the official
    ``init_memory``); once the bank is full the key encoder restarts as a copy of the query encoder."""
    if model.last_keys is None:
        raise RuntimeError("adco_fill_bank needs a forward pass of the model first")
    start = int(model.bank_filled)
    n = min(model.last_keys.shape[0], model.bank_size - start)
    model.negatives[start:start + n] = model.last_keys[:n].to(model.negatives.dtype)
    model.bank_filled += n
    if int(model.bank_filled) == model.bank_size:
        for pk, pq in zip(model.moco.encoder_k.parameters(), model.moco.encoder_q.parameters()):
            pk.copy_(pq.detach())


def adco_negative_step(model: AdCo, pos: Tensor, neg: Tensor, lr_neg: float, tau_neg: float,
                       momentum: float = 0.9, weight_decay: float = 1e-4) -> Tensor:
    """One SGD step of the bank on *minus* InfoNCE at temperature ``tau_neg`` (gradient ascent); returns that loss.

    ``pos`` ``[N]`` and ``neg`` ``[N, W·N − 1 + K]`` are the last ``model(x1, x2)``'s outputs; the queries come
    from that forward (``model.last_query``), so the step may run before or after the encoder's backward and
    optimiser step (the engine loop's ``after_step``; the official code runs it after). With the in-batch
    columns of ``neg`` held fixed, ``L = mean −log e^{s⁺/τₙ} / (e^{s⁺/τₙ} + Σ_batch e^{s/τₙ} + Σₖ e^{q·m̂ₖ/τₙ})``
    is differentiated w.r.t. the bank (in the bank's dtype) and averaged over ranks; then, as the official
    ``update_network``, ``v ← momentum·v − ∇L + weight_decay·M`` and ``M ← M − lr_neg·v``.
    """
    if model.last_query is None:
        raise RuntimeError("adco_negative_step needs a forward pass of the model first")
    bank = model.negatives.detach().requires_grad_(True)
    n_batch = neg.shape[1] - model.bank_size
    q = model.last_query.to(bank.dtype)  # AMP's float16 queries → the bank's dtype
    logits = torch.cat([neg[:, :n_batch].detach().to(bank.dtype), q @ F.normalize(bank, dim=1).T], 1)
    loss = info_nce_from_similarities(pos.detach().to(bank.dtype), logits, tau_neg)
    (grad,) = torch.autograd.grad(loss, bank)
    with torch.no_grad():
        v = model.bank_velocity
        v.mul_(momentum).sub_(D.all_reduce_mean(grad)).add_(model.negatives, alpha=weight_decay)
        model.negatives.sub_(v, alpha=lr_neg)
    return loss.detach()


def build_model(cfg: VisionConfig, crop: int) -> SimCLR | MoCoV2 | AdCo:
    """The method of ``cfg`` on a fresh backbone for ``crop``-px training images (AdCo: ``moco`` + ``adco``)."""
    backbone, feat_dim = build_backbone(cfg.model.arch, resolve_stem(cfg.model.stem, crop), cfg.model.width)
    if cfg.method == "simclr":
        return SimCLR(backbone, feat_dim, hidden=cfg.simclr.hidden, dim=cfg.simclr.dim)
    m = cfg.moco
    if cfg.method == "adco":
        return AdCo(backbone, feat_dim, dim=m.dim, n_negatives=cfg.adco.n_negatives, momentum=m.momentum,
                    mlp=m.mlp, shuffle_bn=m.shuffle_bn, ad_init=cfg.adco.ad_init)
    return MoCoV2(backbone, feat_dim, dim=m.dim, queue_size=m.queue_size, momentum=m.momentum, mlp=m.mlp,
                  shuffle_bn=m.shuffle_bn)
