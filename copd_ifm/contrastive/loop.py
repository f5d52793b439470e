"""The one training loop of the project: :func:`fit`.

Domain code (the CT context model, the vision methods) hands ``fit`` one
:class:`Phase` per kind of step and keeps only what differs: the data plan of
an epoch and a step function that returns cosine similarities. ``fit`` owns the
rest::

    for epoch in epochs:
        for phase in phases:                     # CT: patch level, then graph level; vision: one phase
            for repeat in range(phase.repeats):  # CT graph sub-epochs
                for batch in phase.plan(epoch, repeat):
                    with autocast: out = phase.step(batch); loss = loss_fn(out.pos, out.neg)
                    AMP backward, optimiser and per-step LR schedule steps, metrics, progress bar
        record |= evaluate(epoch, record)        # e.g. the vision kNN monitor
        checkpoint (atomic: model, optimisers, schedulers, scaler, queues, every rank's RNG, history)
        report(history)                          # summaries, tables, plots

The plans must be pure functions of ``(seed, epoch, repeat, rank)`` and the
step functions must draw randomness only from the process RNGs, so a run
resumed from its last checkpoint repeats the uninterrupted run exactly.
Domain-free: torch and torch.distributed only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.losses import instance_accuracy
from copd_ifm.contrastive.metrics import MetricsLogger, Throughput
from copd_ifm.contrastive.runtime import autocast, grad_scaler, optimizer_step, rng_state, set_rng_state
from copd_ifm.errors import UserError


@dataclass
class StepOutput:
    """What a step function returns: cosines before the temperature and how many items the step saw."""

    pos: Tensor    # [N] query · positive
    neg: Tensor    # [N, K] query · negatives
    n_items: int   # items of this rank's batch (patches, subjects, images)


@dataclass
class Phase:
    """One kind of training step with its own optimiser and schedule."""

    name: str                                                   # metric prefix ("patch", "graph"; "" for none)
    unit: str                                                   # what n_items counts: "patches", "images", …
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: Callable[[int, int], tuple[Iterable[Any], int]]       # (epoch, repeat) → (batches, number of steps)
    step: Callable[[Any], StepOutput]                           # one batch → cosines (runs under autocast)
    repeats: int = 1                                            # passes per epoch (CT graph sub-epochs)
    log_every: int = 1                                          # steps between metrics.csv rows
    after_step: Callable[[StepOutput], None] | None = None      # e.g. AdCo's negative update

    def key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric


def fit(model: nn.Module, phases: list[Phase], loss_fn: Callable[[Tensor, Tensor], Tensor], run_dir: str | Path,
        epochs: int, device: torch.device, amp: bool = False, resume: bool = False,
        config: dict[str, Any] | None = None, evaluate: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
        report: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` (or the rest of them, with ``resume``); returns this session's epoch records.

    ``model`` holds every parameter and buffer to checkpoint (MoCo queues included);
    ``config`` is stored in the checkpoint for provenance.
    """
    scaler = grad_scaler(device, amp)
    ckpt = Checkpointer(run_dir)
    start, step = 0, 0
    history: list[dict[str, Any]] = []
    if resume:
        start, step, history = _restore(ckpt, model, phases, scaler, device)
        D.print0(f"{run_dir}: already finished ({start}/{epochs} epochs); nothing to train (--extend with more "
                 f"--epochs trains further)" if start >= epochs else f"resuming {run_dir} after epoch {start}/{epochs}")
    logger = MetricsLogger(run_dir, start_step=step)
    name = Path(run_dir).name  # names the model on its progress bars (e.g. demo-baseline, demo-ifm)
    done: list[dict[str, Any]] = []
    try:
        for epoch in range(start, epochs):
            record: dict[str, Any] = {"epoch": epoch + 1}
            for phase in phases:
                for repeat in range(phase.repeats):
                    step, summary = _run_phase(phase, model, loss_fn, scaler, logger, device, amp, epoch, repeat,
                                               step, f"{name} epoch {epoch + 1}/{epochs} {phase.name or 'train'}"
                                                     + (f" {repeat + 1}/{phase.repeats}" if phase.repeats > 1 else ""))
                    record.update(summary)
            record["step"] = step
            if evaluate is not None:
                record.update(evaluate(epoch, record))
            logger.log(step, **{f"epoch/{k}": float(v) for k, v in record.items() if k not in ("epoch", "step")})
            history.append(record)
            done.append(record)
            ckpt.save({"epoch": epoch + 1, "step": step, "history": history, "model": model.state_dict(),
                       "optimizers": [p.optimizer.state_dict() for p in phases],
                       "schedulers": [p.scheduler.state_dict() for p in phases], "scaler": scaler.state_dict(),
                       "rng": D.all_gather_objects(rng_state()), "config": config or {}, "saved_at": time.time()})
            if report is not None and D.is_main():
                report(history)
            D.print0(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    finally:
        logger.close()
    D.barrier()
    return done


def _run_phase(phase: Phase, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
               scaler: torch.amp.GradScaler, logger: MetricsLogger, device: torch.device, amp: bool, epoch: int,
               repeat: int, step: int, desc: str) -> tuple[int, dict[str, float]]:
    """One pass of ``phase``; returns the global step reached and the pass's means (over steps and ranks)."""
    model.train()
    batches, n_steps = phase.plan(epoch, repeat)
    meter = Throughput()
    loss_sum = torch.zeros((), device=device)
    acc_sum = torch.zeros((), device=device)
    world = D.world_size()
    bar = tqdm(meter.wrap(batches), total=n_steps, desc=desc, leave=False, disable=not D.is_main())
    for batch in bar:
        with autocast(device, amp):
            out = phase.step(batch)
            loss = loss_fn(out.pos, out.neg)
        optimizer_step(loss, phase.optimizer, scaler)
        phase.scheduler.step()
        if phase.after_step is not None:
            phase.after_step(out)
        step += 1
        loss = loss.detach()
        acc = instance_accuracy(out.pos.detach(), out.neg.detach())
        loss_sum += loss
        acc_sum += acc
        meter.step(out.n_items * world)
        if step % phase.log_every == 0:
            value, lr = float(loss), phase.optimizer.param_groups[0]["lr"]
            logger.log(step, **{phase.key("loss"): value, phase.key("acc"): float(acc), phase.key("lr"): lr,
                                phase.key(f"{phase.unit}_per_s"): meter.rate,
                                phase.key("data_wait"): meter.data_wait_fraction})
            bar.set_postfix({"loss": f"{value:.4f}", f"{phase.unit}_s": f"{meter.rate:.0f}"})
    n = max(n_steps, 1)
    return step, {phase.key("loss"): D.all_reduce_mean(loss_sum / n).item(),
                  phase.key("acc"): D.all_reduce_mean(acc_sum / n).item(),
                  phase.key("lr"): phase.optimizer.param_groups[0]["lr"],
                  f"{phase.unit}_per_s": meter.rate, phase.key("data_wait"): meter.data_wait_fraction}


def _restore(ckpt: Checkpointer, model: nn.Module, phases: list[Phase], scaler: torch.amp.GradScaler,
             device: torch.device) -> tuple[int, int, list[dict[str, Any]]]:
    """Load the last checkpoint into ``model``, the phases and ``scaler``; returns (epoch, step, history)."""
    state = ckpt.load(map_location=device)
    if len(state["rng"]) != D.world_size():
        raise UserError(f"{ckpt.path}: saved by {len(state['rng'])} process(es); resume with as many "
                        f"(torchrun --nproc_per_node={len(state['rng'])})")
    model.load_state_dict(state["model"])
    for phase, opt, sched in zip(phases, state["optimizers"], state["schedulers"], strict=True):
        phase.optimizer.load_state_dict(opt)
        phase.scheduler.load_state_dict(sched)
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][D.rank()])
    return int(state["epoch"]), int(state["step"]), list(state["history"])
