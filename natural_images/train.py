"""Contrastive pretraining: SimCLR or MoCo-v2 with IFM, one process or many under ``torchrun``.

An adapter of the engine loop (:func:`copd_ifm.contrastive.loop.fit`) with one phase (views made per image
in the loader workers, or batch-wise on the training device for in-memory datasets, ``augment.device``)::

    for (x1, x2) in loader:                 # two augmented views, [B/W, 3, crop, crop] per rank
        pos, neg = model(x1, x2)            # cosine similarities (SimCLR in-batch, MoCo queue)
        loss = ContrastiveLoss.from_config(config.loss)(pos, neg)

then (every ``knn.every`` epochs and after the last) a kNN monitor on the
train/test splits, ``RUN/checkpoint.pt``, ``RUN/epochs.csv`` and
``RUN/summary.json``; ``RUN/curves.png`` after the last epoch. The data order
and augmentation seeds of epoch ``e`` depend only on (seed, e, rank), so
``--resume`` continues a killed run exactly where its last epoch ended.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.loop import Phase, StepOutput, fit
from copd_ifm.contrastive.optim import build_optimizer, build_scheduler
from copd_ifm.contrastive.rundir import RunContract, start_run, summary_fields
from copd_ifm.contrastive.runtime import loader_workers, seed_everything, setup_backends
from copd_ifm.errors import UserError
from natural_images.augment import TwoViews, eval_transform, train_transform
from natural_images.config import VisionConfig
from natural_images.datasets import build_dataset, dataset_spec, image_sizes, label_names
from natural_images.features import extract_features
from natural_images.gpu_augment import augment_on_device, build_batch_augment, dataset_images
from natural_images.knn import knn_accuracy
from natural_images.methods import AdCo, adco_fill_bank, adco_negative_step, build_model
from natural_images.plots import plot_pretrain
from natural_images.run import read_summary, update_summary

#: ``RUN/config.yaml`` of a vision run: on ``--resume`` only where the data is and how it is loaded may change
#: (``epochs`` upwards with ``--extend``).
CONTRACT = RunContract(VisionConfig, runtime=("data.root", "data.workers", "data.download"), epochs="epochs")


def pretrain(config: VisionConfig, run_dir: str | Path, resume: bool = False, device: str = "auto",
             extend: bool = False) -> dict[str, Any]:
    """Pretrain (or resume) a run in ``run_dir``; returns the final ``summary.json`` content.

    Under ``torchrun`` every rank calls this; ``config.batch_size`` is the global batch.
    ``extend`` lets a resumed run take more ``epochs`` than it was started with
    (the cosine schedule is recomputed over the new length).
    """
    with D.session(device) as info:
        return _pretrain(config, Path(run_dir), resume, extend, info)


def _pretrain(config: VisionConfig, run_dir: Path, resume: bool, extend: bool, info: D.DistInfo) -> dict[str, Any]:
    world, dev = info.world_size, info.device
    if config.batch_size % world:
        raise UserError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    per_rank = config.batch_size // world
    spec = dataset_spec(config.data.dataset)
    crop, eval_size = image_sizes(config.data)
    on_device = augment_on_device(config, dev)
    if on_device:  # raw uint8 images [N, 3, H, W]; the views are made batch-wise on the training device
        train_set: Any = dataset_images(build_dataset(config.data, "pretrain"))
        batch_views = build_batch_augment(config)
    else:
        train_set = build_dataset(config.data, "pretrain",
                                  TwoViews(train_transform(config.augment, config.method, crop, spec.mean, spec.std)))
    evaluation = eval_transform(eval_size, spec.eval_resize, spec.mean, spec.std)
    bank_set, test_set = build_dataset(config.data, "train", evaluation), build_dataset(config.data, "test", evaluation)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=info.rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise UserError(f"{config.data.dataset}: {len(train_set)} pretraining images are fewer than one batch "
                        f"({config.batch_size}); lower --batch-size")
    run_dir = start_run(run_dir, config, CONTRACT, resume, extend)
    setup_backends(dev)
    cuda = dev.type == "cuda"
    amp, channels_last = config.amp and cuda, config.channels_last and cuda
    seed_everything(config.seed + info.rank)

    model: nn.Module = build_model(config, crop).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if D.is_distributed() and config.method == "simclr" and config.simclr.sync_bn and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBatchNorm needs CUDA
    net = model
    model = D.wrap_ddp(model, dev)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.epochs * steps_per_epoch, steps_per_epoch)

    # Augmentation randomness of epoch e comes from (seed, e, rank) alone: the loader workers' generator, or
    # the on-device generator of the batch-wise views.
    device_gen = torch.Generator(device=dev)

    def loader(epoch: int, salt: int = 0) -> DataLoader:
        sampler.set_epoch(epoch)
        epoch_seed = (config.seed * 1_000_003 + epoch) * 1009 + info.rank + salt
        device_gen.manual_seed(epoch_seed)
        return DataLoader(train_set, batch_size=per_rank, sampler=sampler,
                          num_workers=loader_workers(config.data.workers), pin_memory=cuda, drop_last=True,
                          generator=torch.Generator().manual_seed(epoch_seed))

    def plan(epoch: int, _: int) -> tuple[DataLoader, int]:
        return loader(epoch), steps_per_epoch

    def views(batch: Any) -> tuple[Tensor, Tensor]:
        if on_device:
            x1, x2 = batch_views.two_views(batch.to(dev, non_blocking=True), device_gen)
        else:
            (x1, x2), _ = batch
        return _to_device(x1, dev, channels_last), _to_device(x2, dev, channels_last)

    def step(batch: Any) -> StepOutput:
        x1, x2 = views(batch)
        pos, neg = model(x1, x2)
        return StepOutput(pos, neg, x1.shape[0])

    def evaluate(epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        if epoch + 1 == config.epochs or (config.knn.every and (epoch + 1) % config.knn.every == 0):
            return _knn_monitor(net.encoder, bank_set, test_set, config, dev, amp, channels_last, per_rank)
        return {}

    phases = [Phase("", "images", optimizer, scheduler, plan, step, log_every=config.log_every)]
    if isinstance(net, AdCo):
        phases = _adco_phases(net, model, config, phases[0], loader, views, steps_per_epoch)
    started = time.time()
    fit(net, phases, ContrastiveLoss.from_config(config.loss), run_dir, config.epochs, dev, amp=amp, resume=resume,
        config=cfg.to_dict(config), evaluate=evaluate,
        report=lambda history: _write_epoch_outputs(run_dir, config, history, world, dev, time.time() - started))
    return read_summary(run_dir)


def _adco_phases(net: AdCo, model: nn.Module, config: VisionConfig, main: Phase, loader: Callable[..., DataLoader],
                 views: Callable[[Any], tuple[Tensor, Tensor]], steps_per_epoch: int) -> list[Phase]:
    """AdCo as the official code runs it: after each encoder step the bank takes its own SGD step; with
    ``adco.ad_init`` a first phase (epoch 1 only, before the first epoch, at the base rate) trains the encoder
    against the bank alone while filling the bank with the gathered keys, ``ceil(K / batch)`` steps."""
    a = config.adco
    main.after_step = lambda out: adco_negative_step(net, out.pos, out.neg, a.lr_neg, a.tau_neg, a.momentum,
                                                     a.weight_decay)
    if int(net.bank_filled) == net.bank_size:
        return [main]
    n_fill = -(-net.bank_size // config.batch_size)
    if n_fill > steps_per_epoch:
        raise UserError(f"adco.n_negatives {net.bank_size}: one epoch gives {steps_per_epoch * config.batch_size} "
                        f"keys, too few for the ad_init pass to fill the bank; lower adco.n_negatives or set "
                        f"adco.ad_init=false")

    def plan(epoch: int, _: int) -> tuple[Any, int]:
        # Salted: the warm-up sees the first epoch's images in its order, as the official code, not its views.
        return (itertools.islice(loader(epoch, salt=7919), n_fill), n_fill) if epoch == 0 else ((), 0)

    def step(batch: Any) -> StepOutput:
        x1, x2 = views(batch)
        pos, neg = model(x1, x2, warmup=True)
        return StepOutput(pos, neg, x1.shape[0])

    start = main.scheduler.lr_lambdas[0](0)  # the rate the main schedule starts at (official: args.lr)
    constant = torch.optim.lr_scheduler.LambdaLR(main.optimizer, lambda _: start)
    warmup = Phase("adco_init", "images", main.optimizer, constant, plan, step, log_every=config.log_every,
                   after_step=lambda _: adco_fill_bank(net))
    return [warmup, main]


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


def _write_epoch_outputs(run_dir: Path, config: VisionConfig, history: list[dict[str, Any]], world: int,
                         dev: torch.device, wall_s: float) -> None:
    """``epochs.csv`` and ``summary.json`` every epoch; ``curves.png`` after the last (TensorBoard is the live view)."""
    table = pd.DataFrame(history)
    files.atomic_write_text(run_dir / "epochs.csv", table.to_csv(index=False))
    if history[-1]["epoch"] == config.epochs:
        plot_pretrain(table, run_dir / "curves.png", k=config.knn.k)
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
        run_dir, **summary_fields(config, config.loss.epsilon, config.epochs, last["epoch"], world, dev),
        dataset=config.data.dataset, method=config.method, arch=config.model.arch, ifm_alpha=config.loss.alpha,
        temperature=config.loss.temperature, hcl_beta=config.loss.hcl_beta, tau_plus=config.loss.tau_plus,
        batch_size=config.batch_size, status="done" if last["epoch"] == config.epochs else "running",
        loss=last["loss"], images_per_s=last["images_per_s"], wall_s_this_session=round(wall_s, 1), **knn)

