"""References and harnesses shared by several test folders: the repository root, brute-force NT-Xent,
the two-process gloo harness and the one-thread guard."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def brute_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, eps: float = 0.0) -> torch.Tensor:
    """NT-Xent by explicit loops (in float64, returned in the inputs' dtype): anchor a, positive p(a), every
    other embedding except a is in the denominator; IFM's ε lowers the positive and raises each negative cosine."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    losses = []
    for a in range(n2):
        p = (a + n2 // 2) % n2
        pos = (z[a] @ z[p] - eps) / tau
        negs = [(z[a] @ z[j] + eps) / tau for j in range(n2) if j not in (a, p)]
        losses.append(-(pos - torch.logsumexp(torch.stack([pos, *negs]), 0)))
    return torch.stack(losses).mean().to(z1.dtype)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread: on two shared cores thread hand-offs cost more than tiny models compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int) -> None:
    """In a worker: the torchrun environment of ``rank`` of ``world`` on localhost, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def run_two_processes(worker: Callable[..., None], out_dir: str, start_method: str = "fork") -> None:
    """Run ``worker(rank, 2, port, out_dir)`` in two processes; fork inherits the imported modules (seconds on
    2 cores), spawn starts clean interpreters."""
    mp.start_processes(worker, args=(2, free_port(), out_dir), nprocs=2, join=True, start_method=start_method)
