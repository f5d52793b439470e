"""Two gloo processes on CPU: all-gather, shuffle-BN round trip, identical weights and queues after DDP steps,
queues kept out of DDP's buffer broadcasts."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from copd_ifm.contrastive import MoCo, distributed as D
from copd_ifm.contrastive.losses import ContrastiveLoss
from copd_ifm.contrastive.moco import batch_shuffle, batch_unshuffle
from tests.helpers import join_gloo, run_two_processes

pytestmark = pytest.mark.ddp


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    join_gloo(rank, world, port)
    info = D.init_from_env("cpu")
    assert info.world_size == world and D.is_distributed()
    result = {}
    local = torch.arange(4, dtype=torch.float32).view(2, 2) + 10 * rank
    result["gathered"] = D.all_gather_no_grad(local)

    torch.manual_seed(100 + rank)
    x = torch.randn(3, 5) + rank
    y = torch.randn(3, 2)
    (xs, ys), unshuffle = batch_shuffle([x, y])
    result["roundtrip_x"] = torch.equal(batch_unshuffle(xs, unshuffle), x)
    result["roundtrip_y"] = torch.equal(batch_unshuffle(ys, unshuffle), y)
    # Rows of x and y travel together: the shuffled global batch is a row permutation of the original.
    shuffled = D.all_gather_no_grad(torch.cat([xs, ys], 1))
    original = torch.cat([D.all_gather_no_grad(x), D.all_gather_no_grad(y)], 1)
    result["pairs_kept"] = sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, original.tolist()))

    torch.manual_seed(0)  # same initial weights on both ranks
    encoder = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU())
    model = nn.parallel.DistributedDataParallel(MoCo(encoder, 8, dim=4, queue_size=16, momentum=0.9))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)  # different data per rank
    out = model((torch.randn(4, 5),), (torch.randn(4, 5),))
    loss = ContrastiveLoss(0.2, epsilon=0.1)(out.pos, out.neg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    # Parameters and queues must agree; BN running statistics are rank-local by design.
    result["state"] = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    result["state"].update(queue=model.module.queue.clone(), queue_ptr=model.module.queue_ptr.clone())

    # D.wrap_ddp: over several steps parameters and queues stay identical, and the queues are never broadcast
    # (a rank-local mark in the unused queue 1 survives the steps; DDP's default would overwrite it with rank 0's).
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU())
    moco = MoCo(encoder, 8, dim=4, queue_size=32, momentum=0.9, num_queues=2)
    moco.queue[1, 0, 0] = float(rank)
    wrapped = D.wrap_ddp(moco, info.device)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    torch.manual_seed(10 + rank)
    for _ in range(3):
        out = wrapped((torch.randn(4, 5),), (torch.randn(4, 5),), queue_id=0)
        opt.zero_grad()
        ContrastiveLoss(0.2, epsilon=0.1)(out.pos, out.neg).backward()
        opt.step()
    result["wrapped"] = {k: v.detach().clone() for k, v in moco.named_parameters()}
    result["wrapped"].update(queue0=moco.queue[0].clone(), queue_ptr=moco.queue_ptr.clone())
    result["local_mark"] = float(moco.queue[1, 0, 0])
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    D.cleanup()


def test_two_process_gloo(tmp_path):
    run_two_processes(_worker, str(tmp_path), start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    expected = torch.cat([torch.arange(4.0).view(2, 2), torch.arange(4.0).view(2, 2) + 10])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    for r in (r0, r1):
        assert r["roundtrip_x"] and r["roundtrip_y"] and r["pairs_kept"]
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    # Both ranks enqueued the gathered keys of both ranks: 8 keys.
    assert int(r0["state"]["queue_ptr"][0]) == 8
    for key, value in r0["wrapped"].items():
        assert torch.equal(value, r1["wrapped"][key]), key
    assert int(r0["wrapped"]["queue_ptr"][0]) == 3 * 8
    assert (r0["local_mark"], r1["local_mark"]) == (0.0, 1.0)
