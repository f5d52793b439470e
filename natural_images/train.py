"""Contrastive pretraining: SimCLR or MoCo-v2 with IFM, one process or many under ``torchrun``.

One epoch::

    for (x1, x2) in loader:                 # two augmented views, [B/W, 3, crop, crop] per rank
        pos, neg = model(x1, x2)            # cosine similarities (SimCLR in-batch, MoCo queue)
        loss = ContrastiveLoss(τ, ε, α, β, τ⁺)(pos, neg)
        AMP backward + optimiser step; per-step cosine schedule

then (every ``knn.every`` epochs and after the last) a kNN monitor (k = 200)
on the train/test splits, ``RUN/checkpoint.pt`` (atomic; model, optimiser,
scheduler, grad scaler, every rank's RNG state, history), ``RUN/epochs.csv``
and ``RUN/summary.json``; ``RUN/curves.png`` after the last epoch. The data
order and augmentation seeds of epoch ``e`` depend only on (seed, e, rank), so
``--resume`` continues a killed run exactly where its last epoch ended (step
rows logged after that epoch appear twice in ``metrics.csv``; the later wins).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive import ContrastiveLoss, instance_accuracy
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.training import (Checkpointer, MetricsLogger, Throughput, autocast, build_optimizer,
                                           build_scheduler, grad_scaler, optimizer_step, prepare_run_dir,
                                           rng_state, seed_everything, set_rng_state, setup_backends, unwrap)
from copd_ifm.errors import UserError
from natural_images.augment import TwoViews, eval_transform, train_transform
from natural_images.config import VisionConfig
from natural_images.datasets import build_dataset, dataset_spec, image_sizes, label_names
from natural_images.features import extract_features
from natural_images.knn import knn_accuracy
from natural_images.methods import build_model
from natural_images.plots import plot_pretrain
from natural_images.run import read_summary, update_summary

# Fields that may change between a run and its --resume (where the data is, how it is loaded).
RUNTIME_FIELDS = ("data.root", "data.workers", "data.download")


def pretrain(config: VisionConfig, run_dir: str | Path, resume: bool = False, device: str = "auto") -> dict[str, Any]:
    """Pretrain (or resume) a run in ``run_dir``; returns the final ``summary.json`` content.

    Under ``torchrun`` every rank calls this; ``config.batch_size`` is the global batch.
    """
    info = D.init_from_env(device)
    try:
        return _pretrain(config, Path(run_dir), resume, info)
    finally:
        D.cleanup()


def _pretrain(config: VisionConfig, run_dir: Path, resume: bool, info: D.DistInfo) -> dict[str, Any]:
    world, dev = info.world_size, info.device
    if config.batch_size % world:
        raise UserError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    per_rank = config.batch_size // world
    spec = dataset_spec(config.data.dataset)
    crop, eval_size = image_sizes(config.data)
    views = TwoViews(train_transform(config.augment, config.method, crop, spec.mean, spec.std))
    train_set = build_dataset(config.data, "pretrain", views)
    evaluation = eval_transform(eval_size, spec.eval_resize, spec.mean, spec.std)
    bank_set, test_set = build_dataset(config.data, "train", evaluation), build_dataset(config.data, "test", evaluation)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=info.rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise UserError(f"{config.data.dataset}: {len(train_set)} pretraining images are fewer than one batch "
                        f"({config.batch_size}); lower --batch-size")
    run_dir = prepare_run_dir(run_dir, resume)
    _save_or_check_config(config, run_dir, resume)
    setup_backends(dev)
    cuda = dev.type == "cuda"
    amp, channels_last = config.amp and cuda, config.channels_last and cuda
    seed_everything(config.seed + info.rank)

    model: nn.Module = build_model(config, crop).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if D.is_distributed():
        if config.method == "simclr" and config.simclr.sync_bn and cuda:  # SyncBatchNorm needs CUDA
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if cuda else None)
    net = unwrap(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.epochs * steps_per_epoch, steps_per_epoch)
    scaler = grad_scaler(dev, amp)
    loss_cfg = config.loss
    criterion = ContrastiveLoss(loss_cfg.temperature, loss_cfg.ifm_eps, loss_cfg.ifm_alpha, loss_cfg.hcl_beta,
                                loss_cfg.tau_plus)
    ckpt = Checkpointer(run_dir)
    start_epoch, history = 0, []
    if resume:
        state = ckpt.load("cpu")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) != world:
            raise UserError(f"{ckpt.path}: saved by {len(state['rng'])} processes; resume with the same number")
        set_rng_state(state["rng"][info.rank])
        start_epoch, history = state["epoch"], state["history"]
        D.print0(f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")

    step = start_epoch * steps_per_epoch
    logger = MetricsLogger(run_dir, resume_step=step if resume else None)
    parts = _Parts(model, criterion, optimizer, scheduler, scaler, logger, Throughput(), dev, amp,
                   channels_last, world)
    started = time.time()
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        # A fresh generator per epoch seeds the loader workers' augmentations from (seed, epoch, rank) alone.
        gen = torch.Generator().manual_seed((config.seed * 1_000_003 + epoch) * 1009 + info.rank)
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=config.data.workers,
                            pin_memory=cuda, drop_last=True, generator=gen)
        row = _train_epoch(parts, loader, steps_per_epoch, step, config.log_every,
                           desc=f"epoch {epoch + 1}/{config.epochs}")
        step = row["step"]
        row = {"epoch": epoch + 1, **row}
        last = epoch + 1 == config.epochs
        if last or (config.knn.every and (epoch + 1) % config.knn.every == 0):
            row.update(_knn_monitor(net.encoder, bank_set, test_set, config, dev, amp, channels_last, per_rank))
        parts.logger.log(step, **{f"epoch/{k}": float(v) for k, v in row.items() if k not in ("epoch", "step")})
        history.append(row)
        rngs = D.all_gather_objects(rng_state())
        ckpt.save({"epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                   "history": history, "config": cfg.to_dict(config)})
        if D.is_main():
            _write_epoch_outputs(run_dir, config, history, world, dev, time.time() - started, plot=last)
        D.print0(_epoch_line(row, config.epochs))
    parts.logger.close()
    D.barrier()
    return read_summary(run_dir)


@dataclass
class _Parts:
    """What one training step needs."""

    model: nn.Module
    criterion: ContrastiveLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    logger: MetricsLogger
    meter: Throughput
    device: torch.device
    amp: bool
    channels_last: bool
    world: int


def _train_epoch(p: _Parts, loader: DataLoader, steps: int, step: int, log_every: int, desc: str) -> dict[str, Any]:
    """One pass over ``loader``; returns the global step reached and epoch means (loss, instance accuracy %)."""
    p.model.train()
    p.meter.reset()
    loss_sum = torch.zeros((), device=p.device)
    acc_sum = torch.zeros((), device=p.device)
    bar = tqdm(p.meter.wrap(loader), total=steps, desc=desc, leave=False, disable=not D.is_main())
    for (x1, x2), _ in bar:
        x1, x2 = _to_device(x1, p.device, p.channels_last), _to_device(x2, p.device, p.channels_last)
        with autocast(p.device, p.amp):
            pos, neg = p.model(x1, x2)
            loss = p.criterion(pos, neg)
        optimizer_step(loss, p.optimizer, p.scaler)
        p.scheduler.step()
        step += 1
        loss_sum += loss.detach()
        acc_sum += instance_accuracy(pos.detach(), neg.detach())
        p.meter.step(x1.shape[0] * p.world)
        if step % log_every == 0:
            value = loss.item()
            p.logger.log(step, loss=value, lr=p.optimizer.param_groups[0]["lr"], images_per_s=p.meter.rate,
                         data_wait=p.meter.data_wait_fraction)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{p.meter.rate:.0f}")
    return {"step": step, "loss": D.all_reduce_mean(loss_sum / steps).item(),
            "instance_acc": 100 * D.all_reduce_mean(acc_sum / steps).item(),
            "lr": p.optimizer.param_groups[0]["lr"], "images_per_s": p.meter.rate,
            "data_wait": p.meter.data_wait_fraction}


def _to_device(x: Tensor, dev: torch.device, channels_last: bool) -> Tensor:
    x = x.to(dev, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _knn_monitor(encoder: nn.Module, bank_set: Any, test_set: Any, config: VisionConfig, dev: torch.device,
                 amp: bool, channels_last: bool, batch_size: int) -> dict[str, float]:
    """kNN top-1 (%) on the test split with the train split as memory bank, one value per label column."""
    opts = dict(batch_size=batch_size, workers=config.data.workers, device=dev, amp=amp, channels_last=channels_last)
    bank_x, bank_y = extract_features(encoder, bank_set, desc="kNN bank", **opts)
    test_x, test_y = extract_features(encoder, test_set, desc="kNN test", **opts)
    return {f"knn_top1_{name}": 100 * knn_accuracy(test_x, test_y[:, col], bank_x, bank_y[:, col],
                                                   config.knn.k, config.knn.temperature)
            for col, name in enumerate(label_names(test_set))}


def _save_or_check_config(config: VisionConfig, run_dir: Path, resume: bool) -> None:
    """Write ``RUN/config.yaml``; on resume, refuse a config that differs beyond :data:`RUNTIME_FIELDS`."""
    path = run_dir / "config.yaml"
    if resume and path.is_file():
        saved, now = cfg.flatten(cfg.to_dict(cfg.load(VisionConfig, path))), cfg.flatten(cfg.to_dict(config))
        changed = sorted(k for k in saved.keys() | now.keys()
                         if k not in RUNTIME_FIELDS and saved.get(k) != now.get(k))
        if changed:
            raise UserError(f"--resume: {changed[0]} differs from {path} ({saved.get(changed[0])!r} there, "
                            f"{now.get(changed[0])!r} now); resume with the saved config or start a new --out")
    if D.is_main():
        cfg.save_resolved(config, path)


def _write_epoch_outputs(run_dir: Path, config: VisionConfig, history: list[dict[str, Any]], world: int,
                         dev: torch.device, wall_s: float, plot: bool) -> None:
    """``epochs.csv`` and ``summary.json`` every epoch; ``curves.png`` when ``plot`` (TensorBoard is the live view)."""
    table = pd.DataFrame(history)
    files.atomic_write_text(run_dir / "epochs.csv", table.to_csv(index=False))
    if plot:
        plot_pretrain(table, run_dir / "curves.png")
    knn: dict[str, Any] = {"knn_top1": {}, "knn_epoch": None, "best_knn_top1": {}}
    cols = [c for c in table.columns if c.startswith("knn_top1_")]
    evaluated = table.dropna(subset=cols) if cols else table.iloc[:0]
    if len(evaluated):
        names = {c: c.removeprefix("knn_top1_") for c in cols}
        knn = {"knn_top1": {names[c]: float(evaluated[c].iloc[-1]) for c in cols},
               "knn_epoch": int(evaluated["epoch"].iloc[-1]),
               "best_knn_top1": {names[c]: float(evaluated[c].max()) for c in cols}}
    last = history[-1]
    update_summary(
        run_dir, dataset=config.data.dataset, method=config.method, arch=config.model.arch,
        ifm_eps=config.loss.ifm_eps, ifm_alpha=config.loss.ifm_alpha, temperature=config.loss.temperature,
        hcl_beta=config.loss.hcl_beta, tau_plus=config.loss.tau_plus, batch_size=config.batch_size,
        epochs=config.epochs, epochs_done=last["epoch"],
        status="done" if last["epoch"] == config.epochs else "running",
        loss=last["loss"], images_per_s=last["images_per_s"], world_size=world, device=str(dev),
        config_hash=cfg.config_hash(config), wall_s_this_session=round(wall_s, 1), **knn)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    knn = "  ".join(f"{k.removeprefix('knn_top1_')} kNN {v:.2f}%" for k, v in row.items()
                    if k.startswith("knn_top1_"))
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  inst-acc {row['instance_acc']:.1f}%  "
            f"{row['images_per_s']:.0f} img/s  {knn}").rstrip()
