"""SimCLR under DDP (two gloo processes): global in-batch negatives and the single-process gradient."""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive import distributed as D
from natural_images.methods import SimCLR


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_simclr() -> SimCLR:
    """Same weights in every process; no BatchNorm, so per-rank and global batches embed alike."""
    torch.manual_seed(0)
    model = SimCLR(nn.Linear(6, 5), 5, hidden=4, dim=3)
    model.head[1] = nn.Identity()
    return model


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    D.init_from_env("cpu")
    model = nn.parallel.DistributedDataParallel(_tiny_simclr())
    x1, x2 = torch.load(os.path.join(out_dir, "batch.pt"))
    mine = slice(rank * 4, (rank + 1) * 4)
    pos, neg = model(x1[mine], x2[mine])
    ContrastiveLoss(0.5, epsilon=0.1)(pos, neg).backward()
    grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
    torch.save({"grads": grads, "neg_shape": tuple(neg.shape)}, os.path.join(out_dir, f"rank{rank}.pt"))
    D.cleanup()


def test_simclr_under_ddp_sees_the_global_batch_and_matches_the_single_process_gradient(tmp_path):
    torch.manual_seed(1)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    torch.save((x1, x2), tmp_path / "batch.pt")
    # fork: the workers inherit the imported modules instead of importing torch again (seconds on 2 cores).
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    single = _tiny_simclr()
    pos, neg = single(x1, x2)
    ContrastiveLoss(0.5, epsilon=0.1)(pos, neg).backward()
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["neg_shape"] == (16, 14)  # 2 × 8 global anchors, 2 × 8 − 2 negatives each
        for name, p in single.named_parameters():
            assert torch.allclose(out["grads"][name], p.grad, atol=1e-6), name
