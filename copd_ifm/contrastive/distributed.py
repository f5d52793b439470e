"""torch.distributed helpers: one process per GPU under torchrun (NCCL), or per CPU worker (gloo).

Everything works unchanged in a single process without ``torch.distributed``
initialised: world size 1, rank 0, gathers return their input.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without them this is a single process. ``device``: ``"auto"`` (CUDA when
    available), ``"cpu"`` or ``"cuda"``. Backend: NCCL on CUDA, gloo on CPU.
    """
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


@torch.no_grad()
def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` ``[B, ...]`` from every rank along dim 0 → ``[world·B, ...]``; no gradient."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather ``[B, D]`` → ``[W·B, D]``; backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``[B, ...]`` over ranks with gradients flowing back to each owner (SimCLR's
    in-batch negatives across GPUs); the identity in a single process."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over ranks (a copy; the input is untouched)."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def print0(*args: object, **kwargs: object) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)  # type: ignore[call-overload]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto") -> Iterator[DistInfo]:
    """``with session(device) as info:`` the process group of :func:`init_from_env` for the block, torn down
    on every exit (return, error, interrupt) so that a failed command never leaves a group or a port behind.

    A group that was already up when the block began is its opener's: it is left standing, so a command
    called from inside another (a study's pretrain, then its read-out) does not end its caller's group.
    """
    opened = not (dist.is_available() and dist.is_initialized())
    info = init_from_env(device)
    try:
        yield info
    finally:
        if opened:
            cleanup()


#: Buffers that every rank keeps identical by construction (MoCo queues are filled with gathered keys, AdCo's
#: bank momentum with all-reduced gradients), so DistributedDataParallel must not broadcast them each step
#: (575 queues × 4096 × 128 floats ≈ 1.2 GB; AdCo's 65536 × 128 velocity 32 MB).
LOCAL_BUFFERS = ("queue", "queue_ptr", "bank_velocity", "bank_filled")


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when distributed (else itself), queues excluded from broadcasts."""
    if not is_distributed():
        return module
    ignored = [name for name, _ in module.named_buffers() if name.rsplit(".", 1)[-1] in LOCAL_BUFFERS]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
