"""Contrastive objectives with implicit feature modification (IFM).

Every loss here works on *cosine similarities* of unit embeddings, before the
temperature: ``pos`` ``[N]`` (query · positive) and ``neg`` ``[N, K]``
(query · negatives). MoCo returns exactly these, SimCLR builds them with
:func:`simclr_similarities`, so one set of similarities serves InfoNCE, its
IFM-perturbed twin and the hard-negative objective without a second forward pass.

IFM (Robinson et al., NeurIPS 2021, Eq. 2). An adversary moves the positive
key ``k⁺`` and each negative ``k⁻ᵢ`` inside ℓ₂ balls of radius ε to maximise the
InfoNCE loss of a unit query ``q``. The worst case is closed-form,
``k⁺ − εq`` and ``k⁻ᵢ + εᵢq``, i.e. a shift of the cosine logits::

    L_ε = −log  exp((q·k⁺ − ε)/τ) / ( exp((q·k⁺ − ε)/τ) + Σᵢ exp((q·k⁻ᵢ + εᵢ)/τ) )

and the encoder is trained on ``(L + α·L_ε) / 2`` (α = 1 by default), or on
``L_ε`` alone (``ifm_only``: Table 2's "L_ε" row, Fig. 7's "L_ε alone ≈ L").

α normalisation. The paper writes ``(L + α·L_ε) / 2``; the official code
divides by ``1 + α``. Both agree at α = 1. This module uses ``/ 2`` for every
α: its gradient is ``(1 + α)/2`` times that of the convex combination
``(L + α·L_ε)/(1 + α)``, so with plain SGD a run here at learning rate ``η``
matches the official code at ``η·(1 + α)/2`` (e.g. α = 3: twice the official
rate). Adam is invariant to a constant loss scale up to its ``eps``; L2 weight
decay added to the gradient is not rescaled, so its relative strength differs
by the same factor.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Epsilon = float | Tensor


def similarities(query: Tensor, positive: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine similarities of L2-normalised embeddings.

    Args:
        query: ``[N, D]``.
        positive: ``[N, D]``, row ``n`` is the positive of query ``n``.
        negatives: ``[K, D]`` shared by every query (a MoCo queue) or ``[N, K, D]`` per query.

    Returns:
        ``pos`` ``[N]`` and ``neg`` ``[N, K]``, each in [−1, 1].
    """
    q = F.normalize(query, dim=-1)
    pos = (q * F.normalize(positive, dim=-1)).sum(-1)
    k = F.normalize(negatives, dim=-1)
    if k.dim() == 2:
        neg = q @ k.T
    elif k.dim() == 3:
        neg = torch.einsum("nd,nkd->nk", q, k)
    else:
        raise ValueError(f"negatives must be [K, D] or [N, K, D], got shape {tuple(negatives.shape)}")
    return pos, neg


def simclr_similarities(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    """SimCLR's in-batch similarities, both directions.

    Args:
        z1, z2: ``[N, D]`` embeddings of two views; row ``n`` of each is the same image.

    Returns:
        ``pos`` ``[2N]`` and ``neg`` ``[2N, 2N − 2]``: anchor ``a`` of the stacked
        ``[z1; z2]`` has its other view as positive and the ``2N − 2`` remaining
        embeddings as negatives, in column order.

    The positives are the ``±N`` diagonals of the similarity matrix and the
    negatives one ``gather`` with a cached index, so no boolean mask is built
    (no ``nonzero``, hence no device→host sync on CUDA, and a plain scatter backward).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T
    pos = torch.cat([sim.diagonal(n), sim.diagonal(-n)])
    return pos, sim.gather(1, _negative_columns(n, sim.device))


@functools.lru_cache(maxsize=16)
def _negative_columns(n: int, device: torch.device) -> Tensor:
    """``[2N, 2N − 2]``: anchor ``a``'s negative columns, every ``j`` with ``j mod N ≠ a mod N``, ascending."""
    position = torch.arange(2 * n - 2)
    block, within = position // (n - 1), position % (n - 1)
    anchor = torch.arange(2 * n)[:, None] % n
    return (block * n + within + (within >= anchor).long()).to(device)


def perturb(pos: Tensor, neg: Tensor, epsilon: Epsilon) -> tuple[Tensor, Tensor]:
    """IFM's worst-case logit shift: ``pos − ε``, ``neg + εᵢ``.

    ``epsilon`` is a float or a tensor of per-negative budgets broadcastable to
    ``neg`` (``[K]`` or ``[N, K]``); the positive is shifted by ``ε`` when
    scalar and by the mean budget of its row otherwise (the positive has one budget).
    """
    if isinstance(epsilon, Tensor) and epsilon.dim() > 0:
        eps = epsilon.to(neg.dtype).expand_as(neg)
        return pos - eps.mean(-1), neg + eps
    return pos - epsilon, neg + epsilon


def info_nce_from_similarities(pos: Tensor, neg: Tensor, temperature: float, epsilon: Epsilon = 0.0) -> Tensor:
    """Mean InfoNCE (``epsilon = 0``) or IFM loss ``L_ε`` from cosine similarities.

    ``pos`` ``[N]``, ``neg`` ``[N, K]`` → scalar. The positive is class 0 of a
    ``K + 1``-way cross-entropy over ``logits / temperature``.
    """
    if not _is_zero(epsilon):
        pos, neg = perturb(pos, neg, epsilon)
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(_full_precision(logits), target)


def hard_negative_from_similarities(pos: Tensor, neg: Tensor, temperature: float, beta: float = 1.0,
                                    tau_plus: float = 0.1, epsilon: Epsilon = 0.0) -> Tensor:
    """Hard-negative objective of Robinson et al. (ICLR 2021), optionally IFM-perturbed.

    With ``posₙ = e^{s⁺/τ}``, ``negᵢ = e^{sᵢ/τ}`` and ``M`` negatives::

        impᵢ = negᵢ^β,   R = Σᵢ impᵢ·negᵢ / mean(imp)
        Ng = max((R − τ⁺·M·pos) / (1 − τ⁺),  M·e^{−1/τ})
        ℓ = −log( pos / (pos + Ng) )

    ``β = 0, τ⁺ = 0`` is InfoNCE. Computed in the log domain (β = 4 at τ = 0.05
    overflows float32 otherwise). ``pos`` ``[N]``, ``neg`` ``[N, M]`` → scalar mean.
    """
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if not _is_zero(epsilon):
        pos, neg = perturb(pos, neg, epsilon)
    pos_logit = _full_precision(pos) / temperature
    neg_logit = _full_precision(neg) / temperature
    m = neg_logit.shape[1]
    log_r = torch.logsumexp((1 + beta) * neg_logit, dim=1) - (torch.logsumexp(beta * neg_logit, dim=1) - math.log(m))
    shift = torch.maximum(pos_logit, log_r).detach()
    pos_s = torch.exp(pos_logit - shift)
    floor = m * torch.exp(-1.0 / temperature - shift)
    ng = torch.maximum((torch.exp(log_r - shift) - tau_plus * m * pos_s) / (1 - tau_plus), floor)
    return (torch.log(pos_s + ng) - (pos_logit - shift)).mean()


def _full_precision(x: Tensor) -> Tensor:
    """Half-precision logits (AMP) are upcast: ``exp`` of ``s/τ`` overflows float16 at small τ."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _is_zero(epsilon: Epsilon) -> bool:
    return (not isinstance(epsilon, Tensor) and epsilon == 0) or (
        isinstance(epsilon, Tensor) and not bool(torch.any(epsilon != 0)))


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float,
             epsilon: Epsilon = 0.0) -> Tensor:
    """InfoNCE of queries ``[N, D]`` against positives ``[N, D]`` and negatives ``[K, D]`` or ``[N, K, D]``.

    Inputs are L2-normalised inside. ``epsilon > 0`` gives IFM's ``L_ε`` (paper
    Eq. 2); ``epsilon`` may be a tensor of per-negative budgets. Returns a scalar mean.
    """
    return info_nce_from_similarities(*similarities(query, positive, negatives), temperature, epsilon)


def _base_loss(pos: Tensor, neg: Tensor, temperature: float, beta: float, tau_plus: float,
               epsilon: Epsilon = 0.0) -> Tensor:
    """InfoNCE, or the hard-negative objective when ``beta`` or ``tau_plus`` is non-zero; ``L_ε`` when ``epsilon``."""
    if beta == 0 and tau_plus == 0:
        return info_nce_from_similarities(pos, neg, temperature, epsilon)
    return hard_negative_from_similarities(pos, neg, temperature, beta, tau_plus, epsilon)


def ifm_objective(pos: Tensor, neg: Tensor, temperature: float, epsilon: Epsilon, alpha: float = 1.0,
                  beta: float = 0.0, tau_plus: float = 0.0) -> Tensor:
    """``(L + α·L_ε) / 2`` from one set of similarities (no second forward pass).

    ``L`` is InfoNCE, or the hard-negative objective when ``beta`` or ``tau_plus``
    is non-zero. The divisor is 2 for every α (the paper's form; the official
    code's ``1 + α`` differs for α ≠ 1, see the module docstring).
    """
    base = _base_loss(pos, neg, temperature, beta, tau_plus)
    adv = _base_loss(pos, neg, temperature, beta, tau_plus, epsilon)
    return (base + alpha * adv) / 2


def ifm_loss(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float, epsilon: Epsilon,
             alpha: float = 1.0) -> Tensor:
    """IFM training objective ``(L + α·L_ε) / 2`` for queries, positives and negatives as in :func:`info_nce`."""
    return ifm_objective(*similarities(query, positive, negatives), temperature, epsilon, alpha)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, epsilon: Epsilon = 0.0, alpha: float = 1.0) -> Tensor:
    """SimCLR's NT-Xent over ``2N − 2`` in-batch negatives, both directions; IFM when ``epsilon > 0``.

    ``z1``, ``z2``: ``[N, D]`` → scalar. With ``epsilon = 0`` this is plain NT-Xent.
    """
    pos, neg = simclr_similarities(z1, z2)
    if _is_zero(epsilon):
        return info_nce_from_similarities(pos, neg, temperature)
    return ifm_objective(pos, neg, temperature, epsilon, alpha)


def instance_accuracy(pos: Tensor, neg: Tensor) -> Tensor:
    """Share of queries whose positive beats every negative (instance-discrimination top-1)."""
    return (pos > neg.max(dim=1).values).float().mean()


class ContrastiveLoss(nn.Module):
    """The training objective on cosine similarities ``pos`` ``[N]``, ``neg`` ``[N, K]``.

    ``epsilon = 0`` is the baseline ``L`` (InfoNCE, or the hard-negative
    objective when ``beta``/``tau_plus`` are set); ``epsilon > 0`` trains on
    ``(L + α·L_ε) / 2`` (divisor 2 for every α, see the module docstring), or on
    ``L_ε`` alone when ``ifm_only``, where ``L_ε`` shifts the positive logit by
    ``−ε`` and every negative by ``+ε`` before the division by the temperature ``τ``::

        L_ε = −log  e^{(s⁺ − ε)/τ} / ( e^{(s⁺ − ε)/τ} + Σᵢ e^{(sᵢ + ε)/τ} )

    ``ifm_only`` ignores ``alpha``; with ``epsilon = 0`` it is the baseline ``L``.
    """

    def __init__(self, temperature: float = 0.2, epsilon: float = 0.0, alpha: float = 1.0,
                 beta: float = 0.0, tau_plus: float = 0.0, ifm_only: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.temperature, self.epsilon, self.alpha = temperature, epsilon, alpha
        self.beta, self.tau_plus, self.ifm_only = beta, tau_plus, ifm_only

    @classmethod
    def from_config(cls, cfg: LossConfig) -> ContrastiveLoss:
        return cls(cfg.temperature, cfg.epsilon, cfg.alpha, cfg.hcl_beta, cfg.tau_plus, cfg.ifm_only)

    def forward(self, pos: Tensor, neg: Tensor) -> Tensor:
        if self.epsilon == 0 or self.ifm_only:
            return _base_loss(pos, neg, self.temperature, self.beta, self.tau_plus, self.epsilon)
        return ifm_objective(pos, neg, self.temperature, self.epsilon, self.alpha, self.beta, self.tau_plus)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, alpha={self.alpha}, "
                f"beta={self.beta}, tau_plus={self.tau_plus}, ifm_only={self.ifm_only}")


@dataclass
class LossConfig:
    """The ``loss:`` section of every pretraining config, CT and vision alike (ε = 0 is the baseline)."""

    temperature: float = 0.2     # τ, dividing the cosines
    epsilon: float = 0.0         # IFM budget ε on the cosines
    alpha: float = 1.0           # weight of L_ε in (L + α·L_ε)/2
    hcl_beta: float = 0.0        # hard-negative concentration β (0: uniform negatives)
    tau_plus: float = 0.0        # positive-class prior τ⁺ of the debiased estimator
    ifm_only: bool = False       # train on L_ε alone (the paper's Table 2 "L_ε" row)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.epsilon < 0:
            raise ValueError(f"loss.epsilon must be >= 0 (0 is the baseline), got {self.epsilon}")
        if self.alpha < 0:
            raise ValueError(f"loss.alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.tau_plus < 1:
            raise ValueError(f"loss.tau_plus must be in [0, 1), got {self.tau_plus}")
