"""MoCo-v2 (He et al. 2020; Chen et al. 2020) over any encoder, with one or many key queues.

The whole method::

    q = normalize(head_q(f_q(x_q)))                 # [N, dim], gradients flow
    with no_grad:  θ_k ← m·θ_k + (1 − m)·θ_q         # momentum update
                   k = normalize(head_k(f_k(x_k)))   # [N, dim], shuffle-BN under DDP
    pos = q·k  [N],   neg = q·queueᵀ  [N, K]        # cosine similarities, before τ
    queue ← enqueue(all_gather(k))                  # FIFO of the last K keys

``forward`` returns ``pos`` and ``neg`` so any loss of
:mod:`copd_ifm.contrastive.losses` (InfoNCE, IFM, hard negatives) applies.
``num_queues > 1`` keeps one queue per group (the context-aware model keeps
one per anatomical landmark, so negatives are the same location in other
subjects); a batch then comes from one group, named by ``queue_id``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from copd_ifm.contrastive import distributed as D


def projection_head(in_dim: int, out_dim: int, hidden_dim: int | None = None, mlp: bool = True) -> nn.Module:
    """MoCo-v2 / SimCLR projection: ``Linear → ReLU → Linear`` (``mlp``) or one ``Linear``."""
    if not mlp:
        return nn.Linear(in_dim, out_dim)
    hidden = hidden_dim or in_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Embedder(nn.Module):
    """``head(encoder(*inputs))``: an encoder ``[B, ...] → [B, F]`` followed by a projection ``[B, F] → [B, dim]``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, *inputs: object) -> Tensor:
        return self.head(self.encoder(*inputs))


@torch.no_grad()
def batch_shuffle(inputs: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Shuffle a batch across ranks (MoCo's shuffle-BN); all tensors share one permutation.

    Each tensor is ``[B, ...]`` on every rank. Returns this rank's share of the
    shuffled global batch and the index that undoes it (for :func:`batch_unshuffle`).
    """
    gathered = [D.all_gather_no_grad(x) for x in inputs]
    total = gathered[0].shape[0]
    perm = torch.randperm(total, device=gathered[0].device)
    if D.is_distributed():
        dist.broadcast(perm, src=0)
    mine = perm.view(D.world_size(), -1)[D.rank()]
    return [g[mine] for g in gathered], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle` for outputs ``x`` ``[B, ...]`` of the shuffled batch."""
    gathered = D.all_gather_no_grad(x)
    return gathered[unshuffle.view(D.world_size(), -1)[D.rank()]]


@dataclass
class MoCoOutput:
    pos: Tensor   # [N] cosine similarity of each query with its key
    neg: Tensor   # [N, K] cosine similarity with the queue (before this batch's keys)
    q: Tensor     # [N, dim] normalised query embeddings
    k: Tensor     # [N, dim] normalised key embeddings (no gradient)


class MoCo(nn.Module):
    """MoCo-v2 wrapper.

    Args:
        encoder: module mapping ``*inputs`` → features ``[B, feat_dim]``.
        feat_dim: width of the encoder's output.
        dim: embedding width (128).
        queue_size: keys kept per queue ``K`` (4096 / 65536).
        momentum: key encoder momentum ``m`` (0.999).
        mlp: MoCo-v2 MLP head (True) or a linear one (MoCo-v1).
        num_queues: independent queues (1, or one per landmark).
        shuffle_bn: shuffle keys across ranks under DDP (tensor inputs only).
    """

    queue: Tensor       # [num_queues, K, dim] buffer
    queue_ptr: Tensor   # [num_queues] long buffer

    def __init__(self, encoder: nn.Module, feat_dim: int, dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.999, mlp: bool = True, num_queues: int = 1, shuffle_bn: bool = True) -> None:
        super().__init__()
        if queue_size < 1 or num_queues < 1:
            raise ValueError("queue_size and num_queues must be >= 1")
        self.momentum, self.shuffle_bn = momentum, shuffle_bn
        self.encoder_q = Embedder(encoder, projection_head(feat_dim, dim, mlp=mlp))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(num_queues, queue_size, dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros(num_queues, dtype=torch.long))
        # The pointers also live on the host, so enqueueing never reads the device back (a sync per step on
        # CUDA); the buffer is written alongside for checkpoints and re-read once after a state_dict load.
        self._host_ptr: list[int] | None = None
        self.register_load_state_dict_post_hook(MoCo._forget_host_ptr)

    @staticmethod
    def _forget_host_ptr(module: MoCo, incompatible_keys: object) -> None:
        module._host_ptr = None

    @property
    def queue_size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``θ_k ← m·θ_k + (1 − m)·θ_q`` for every parameter of the key encoder (one fused update of all)."""
        keys: list[Tensor] = list(self.encoder_k.parameters())
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [p.detach() for p in self.encoder_q.parameters()], alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, queue_id: int = 0) -> None:
        """Write ``keys`` ``[B, dim]`` (gathered from all ranks) at the pointer, wrapping around."""
        keys = D.all_gather_no_grad(keys)[-self.queue_size:].to(self.queue.dtype)
        if self._host_ptr is None:
            self._host_ptr = self.queue_ptr.tolist()
        ptr, b = self._host_ptr[queue_id], keys.shape[0]
        head = min(b, self.queue_size - ptr)              # up to the end of the queue, the rest wraps to the start
        self.queue[queue_id, ptr:ptr + head] = keys[:head]
        self.queue[queue_id, :b - head] = keys[head:]
        self._host_ptr[queue_id] = (ptr + b) % self.queue_size
        self.queue_ptr[queue_id] = self._host_ptr[queue_id]

    @torch.no_grad()
    def keys(self, *inputs: object) -> Tensor:
        """Normalised key embeddings ``[B, dim]``, with shuffle-BN across ranks when enabled."""
        tensors = all(isinstance(x, Tensor) for x in inputs)
        if self.shuffle_bn and tensors and D.is_distributed():
            shuffled, unshuffle = batch_shuffle(inputs)  # type: ignore[arg-type]
            return batch_unshuffle(F.normalize(self.encoder_k(*shuffled), dim=1), unshuffle)
        return F.normalize(self.encoder_k(*inputs), dim=1)

    def forward(self, query_inputs: Sequence[object], key_inputs: Sequence[object], queue_id: int = 0,
                update_queue: bool = True) -> MoCoOutput:
        """Similarities of queries with their keys and with queue ``queue_id``; then enqueue the keys."""
        q = F.normalize(self.encoder_q(*query_inputs), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self.keys(*key_inputs)
        pos = (q * k).sum(1)
        neg = q @ self.queue[queue_id].clone().detach().T.to(q.dtype)
        if update_queue:
            self.enqueue(k, queue_id)
        return MoCoOutput(pos=pos, neg=neg, q=q, k=k)
