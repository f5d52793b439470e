"""SimCLR and AdCo under DDP (two gloo processes): global in-batch negatives and the single-process result."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive import distributed as D
from natural_images.methods import AdCo, SimCLR, adco_fill_bank, adco_negative_step
from tests.helpers import join_gloo, run_two_processes

pytestmark = pytest.mark.ddp


def _tiny_simclr() -> SimCLR:
    """Same weights in every process; no BatchNorm, so per-rank and global batches embed alike."""
    torch.manual_seed(0)
    model = SimCLR(nn.Linear(6, 5), 5, hidden=4, dim=3)
    model.head[1] = nn.Identity()
    return model


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    join_gloo(rank, world, port)
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
    run_two_processes(_ddp_worker, str(tmp_path))
    single = _tiny_simclr()
    pos, neg = single(x1, x2)
    ContrastiveLoss(0.5, epsilon=0.1)(pos, neg).backward()
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["neg_shape"] == (16, 14)  # 2 × 8 global anchors, 2 × 8 − 2 negatives each
        for name, p in single.named_parameters():
            assert torch.allclose(out["grads"][name], p.grad, atol=1e-6), name


def _tiny_adco(ad_init: bool = False) -> AdCo:
    """No BatchNorm, so shuffle-BN and per-rank batches change nothing: DDP must equal one process exactly."""
    torch.manual_seed(0)
    return AdCo(nn.Linear(6, 5), 5, dim=3, n_negatives=5, momentum=0.9, mlp=False, ad_init=ad_init).double()


def _filled_bank(model: nn.Module, net: AdCo, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """One ad_init step: the bank's 5 rows take the first 5 keys of the (gathered) batch."""
    model(x1, x2, warmup=True)
    adco_fill_bank(net)
    return net.negatives.detach().clone()


def _adco_step(model: nn.Module, net: AdCo, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Encoder loss and backward, then the bank's official SGD step (momentum 0.9, weight decay 1e-4)."""
    pos, neg = model(x1, x2)
    ContrastiveLoss(0.12, epsilon=0.1)(pos, neg).backward()
    adco_negative_step(net, pos, neg, lr_neg=3.0, tau_neg=0.02, momentum=0.9, weight_decay=1e-4)
    return neg.detach()


def _adco_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    join_gloo(rank, world, port)
    D.init_from_env("cpu")
    net = _tiny_adco()
    model = D.wrap_ddp(net, torch.device("cpu"))
    x1, x2 = torch.load(os.path.join(out_dir, "batch.pt"))
    mine = slice(rank * 4, (rank + 1) * 4)
    neg = _adco_step(model, net, x1[mine], x2[mine])
    warm = _tiny_adco(ad_init=True)
    filled = _filled_bank(D.wrap_ddp(warm, torch.device("cpu")), warm, x1[mine], x2[mine])
    torch.save({"neg": neg, "filled": filled, "bank": net.negatives.detach().clone(), "velocity": net.bank_velocity.clone(),
                "grads": {k: p.grad.clone() for k, p in net.named_parameters() if p.requires_grad}},
               os.path.join(out_dir, f"adco{rank}.pt"))
    D.cleanup()


def test_adco_under_ddp_uses_the_gathered_keys_as_negatives_in_both_losses(tmp_path):
    torch.manual_seed(2)
    x1, x2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    torch.save((x1, x2), tmp_path / "batch.pt")
    run_two_processes(_adco_worker, str(tmp_path))
    single = _tiny_adco()
    neg = _adco_step(single, single, x1, x2)
    warm = _tiny_adco(ad_init=True)
    filled = _filled_bank(warm, warm, x1, x2)
    assert neg.shape == (8, 8 - 1 + 5)  # all 8 keys of the global batch but the own one, then the bank
    for rank in range(2):
        out = torch.load(tmp_path / f"adco{rank}.pt")
        # rank 1's queries see rank 0's keys (and the reverse): its rows equal the single process's rows 4..7
        assert torch.allclose(out["neg"], neg[rank * 4:(rank + 1) * 4], atol=1e-12)
        # the bank's gradient saw the other rank's keys too, and was averaged over ranks
        assert torch.allclose(out["bank"], single.negatives, atol=1e-12)
        assert torch.allclose(out["velocity"], single.bank_velocity, atol=1e-12)
        # ad_init writes the keys gathered from both ranks (rank 0's 4, then rank 1's first) on every rank
        assert torch.allclose(out["filled"], filled, atol=1e-12)
        for name, p in single.named_parameters():
            if p.requires_grad:
                assert torch.allclose(out["grads"][name], p.grad, atol=1e-10), name
