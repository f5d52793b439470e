"""No training step reads the device back: calls that would wait for a GPU are counted on the CPU and must be 0.

A device→host read goes through ``Tensor.item``/``__int__``/``__float__``/``__bool__``/``tolist``,
``nonzero`` or ``torch.equal``; each is wrapped to count its calls during one step (forward, loss,
backward, optimiser step) of SimCLR, MoCo-v2 and both context-aware levels. The first step of a run
may read once (the host copy of MoCo's queue pointers, the lattice's edge list), so one step runs first.
"""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from copd_ifm.context.model import ContextModel
from copd_ifm.context.steps import ContextSteps
from copd_ifm.context.train import build_model, open_store, resolve_pretrain_config
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.optim import OptimConfig, build_optimizer
from copd_ifm.contrastive.runtime import grad_scaler, optimizer_step
from natural_images.methods import SimCLR, MoCoV2

SYNCING = [(torch.Tensor, name) for name in ("item", "__int__", "__float__", "__bool__", "__index__", "tolist",
                                             "nonzero", "cpu", "numpy")] + [(torch, "nonzero"), (torch, "equal")]


@contextmanager
def counted_syncs() -> Iterator[list[str]]:
    """Inside: every call of a method that reads a tensor back to the host is recorded by name."""
    calls: list[str] = []
    saved = [(owner, name, getattr(owner, name)) for owner, name in SYNCING]

    def counting(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    for owner, name, fn in saved:
        setattr(owner, name, counting(name, fn))
    try:
        yield calls
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def test_the_counter_sees_each_kind_of_read():
    x = torch.arange(4)
    with counted_syncs() as calls:
        x.sum().item(), int(x[1]), bool(x.any()), x.nonzero(), torch.equal(x, x), x.tolist()
    assert {"item", "__int__", "__bool__", "nonzero", "equal", "tolist"} <= set(calls)


def _step_syncs(step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> list[str]:
    scaler = grad_scaler(torch.device("cpu"), False)
    optimizer_step(step(), optimizer, scaler)                 # a first step may read once (host pointer copies)
    with counted_syncs() as calls:
        optimizer_step(step(), optimizer, scaler)
    return calls


def _backbone() -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()), 8


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_vision_step_never_reads_the_device(method, one_thread):
    torch.manual_seed(0)
    backbone, feat = _backbone()
    model = SimCLR(backbone, feat, hidden=16, dim=8) if method == "simclr" else MoCoV2(backbone, feat, 8, 16)
    loss_fn = ContrastiveLoss(0.2, 0.1)
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], OptimConfig(name="sgd"))
    assert _step_syncs(lambda: loss_fn(*model(x1, x2)), opt) == []


FAST = ["model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
        "moco.graph_queue=8", "schedule.patch_batch=4", "schedule.graph_batch=2", "schedule.graph_views=patch",
        "workers=0", "device=cpu"]


@pytest.mark.parametrize("level", ["patch", "graph"])
def test_context_step_never_reads_the_device(level, tiny_cohort, one_thread):
    torch.manual_seed(0)
    cfg = resolve_pretrain_config("ifm", tiny_cohort, overrides=FAST)
    store = open_store(tiny_cohort)
    model: ContextModel = build_model(cfg, store)
    steps = ContextSteps(model, store, cfg, D.DistInfo(0, 1, 0, torch.device("cpu")))
    phase = next(p for p in steps.phases() if p.name == level)
    batch = next(iter(phase.plan(0, 0)[0]))
    loss_fn = ContrastiveLoss.from_config(cfg.loss)

    def step() -> torch.Tensor:
        out = phase.step(batch)
        return loss_fn(out.pos, out.neg)

    assert _step_syncs(step, phase.optimizer) == []
