"""``copd-ifm pretrain``: context-aware MoCo-v2 with IFM on a patch store (CPU, one GPU or torchrun DDP).

Each epoch is one patch epoch (steps of one landmark × many subjects) followed
by ``graph_subepochs`` graph epochs (steps of whole subjects), as in the
anchor. A checkpoint is written atomically after every epoch; ``--resume``
continues a killed run exactly (same batches, same random augmentations).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from copd_ifm import config as cfg_io
from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.augment import PatchAugment
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.data import (PatchStepDataset, SubjectBatchDataset, SubjectDataset, graph_epoch_plan,
                                   loader, patch_epoch_plan)
from copd_ifm.context.model import ContextModel
from copd_ifm.contrastive import ContrastiveLoss, instance_accuracy
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.training import (Checkpointer, MetricsLogger, Throughput, autocast, build_optimizer,
                                           build_scheduler, grad_scaler, optimizer_step, prepare_run_dir,
                                           rng_state, seed_everything, set_rng_state, setup_backends)
from copd_ifm.ct.store import PatchStore
from copd_ifm.errors import UserError

log = logging.getLogger(__name__)


def resolve_pretrain_config(spec: str, cohort: CohortConfig, extra: dict[str, Any] | None = None,
                            overrides: list[str] | None = None) -> PretrainConfig:
    """Pretrain YAML (name in ``configs/pretrain`` or path) → cohort overrides → CLI flags → ``--set``."""
    path = Path(spec) if spec.endswith((".yaml", ".yml")) else cfg_io.CONFIG_DIR / "pretrain" / f"{spec}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (cfg_io.CONFIG_DIR / "pretrain").glob("*.yaml"))
        raise UserError(f"--config {spec!r}: no such pretrain config {path} (known: {', '.join(known)})")
    data = cfg_io.read_yaml(path)
    data = cfg_io.apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in cohort.pretrain_overrides.items()])
    data = cfg_io.merge(data, extra or {})
    data = cfg_io.apply_overrides(data, overrides)
    return cfg_io.from_dict(PretrainConfig, data, str(path))


def open_store(cohort: CohortConfig) -> PatchStore:
    """The cohort's patch store, checked against the cohort's patch settings."""
    store = PatchStore(cohort.store_path)
    if store.patch_size != cohort.patch_size:
        raise UserError(f"{cohort.store_path}: store has {store.patch_size}³ patches but the cohort config asks "
                        f"for {cohort.patch_size}³; rerun `copd-ifm preprocess --cohort {cohort.name}` "
                        f"or set patch_size={store.patch_size}")
    return store


def write_run_config(run_dir: Path, cohort: CohortConfig, cfg: PretrainConfig) -> None:
    """``RUN/config.yaml``: the resolved cohort and pretrain configs, with the pretrain config's hash."""
    doc = {"pretrain": cfg_io.to_dict(cfg), "cohort": cfg_io.to_dict(cohort), "config_hash": cfg_io.config_hash(cfg)}
    files.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: str | Path) -> tuple[CohortConfig, PretrainConfig]:
    """Inverse of :func:`write_run_config`."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a pretrain run folder (no config.yaml); give the --out of `copd-ifm pretrain`")
    doc = cfg_io.read_yaml(path)
    return (cfg_io.from_dict(CohortConfig, doc["cohort"], f"{path}:cohort"),
            cfg_io.from_dict(PretrainConfig, doc["pretrain"], f"{path}:pretrain"))


def build_model(cfg: PretrainConfig, store: PatchStore) -> ContextModel:
    """Model for a store's landmarks and graph (same initial weights for the same seed)."""
    torch.manual_seed(cfg.seed)
    coords = torch.as_tensor(store.landmark_coords, dtype=torch.float32)
    return ContextModel(cfg, coords, store.graph.edge_index)


@dataclass
class _State:
    model: ContextModel
    patch_ddp: nn.Module
    graph_ddp: nn.Module
    opt_patch: torch.optim.Optimizer
    opt_graph: torch.optim.Optimizer
    sched_patch: torch.optim.lr_scheduler.LambdaLR
    sched_graph: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step: int = 0
    cached_feats: Tensor | None = None   # "feature" graph views: [n_subjects, L, F] of this epoch
    feat_scale: Tensor | None = None     # per-feature sd over the cohort [F]


def _check_cohort_size(store: PatchStore, cfg: PretrainConfig, world: int, cohort: CohortConfig) -> None:
    n = len(store.sids)
    need = max(2 * world, 2)
    if n < need:
        raise UserError(f"{cohort.store_path}: {n} preprocessed subject(s), pretraining needs at least {need} "
                        f"(2 per process); add subjects or fix the failures in failures.csv")


def pretrain(cohort: CohortConfig, cfg: PretrainConfig, run_dir: str | Path, resume: bool = False) -> Path:
    """Train the context-aware model on ``cohort``'s patch store; returns the run folder."""
    info = D.init_from_env(cfg.device)
    device = info.device
    setup_backends(device)
    store = open_store(cohort)
    _check_cohort_size(store, cfg, info.world_size, cohort)
    run_dir = prepare_run_dir(run_dir, resume)
    if info.is_main:
        write_run_config(run_dir, cohort, cfg)

    model = build_model(cfg, store).to(device)
    sched = cfg.schedule
    n_subj = len(store.sids)
    patch_steps = len(patch_epoch_plan(n_subj, model.n_landmarks, sched.patch_batch, cfg.seed, 0,
                                       sched.landmarks_per_epoch, 0, info.world_size))
    graph_steps = len(graph_epoch_plan(n_subj, sched.graph_batch, cfg.seed, 0, 0, 0, info.world_size))
    patch_ddp: nn.Module = model.patch
    graph_ddp: nn.Module = model.graph
    if D.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        patch_ddp = nn.parallel.DistributedDataParallel(model.patch, device_ids=ids)
        graph_ddp = nn.parallel.DistributedDataParallel(model.graph, device_ids=ids)
    opt_patch = build_optimizer([p for p in model.patch.parameters() if p.requires_grad], cfg.optim)
    opt_graph = build_optimizer([p for p in model.graph.parameters() if p.requires_grad], cfg.optim)
    state = _State(model, patch_ddp, graph_ddp, opt_patch, opt_graph,
                   build_scheduler(opt_patch, cfg.optim, patch_steps * sched.epochs, patch_steps),
                   build_scheduler(opt_graph, cfg.optim, graph_steps * sched.graph_subepochs * sched.epochs,
                                   graph_steps * sched.graph_subepochs),
                   grad_scaler(device, cfg.amp))
    ckpt = Checkpointer(run_dir)
    start_epoch = 0
    if resume:
        start_epoch = _load_checkpoint(ckpt, state, device)
        D.print0(f"resuming {run_dir} at epoch {start_epoch}/{sched.epochs}")
    else:
        seed_everything(cfg.seed + info.rank)  # same weights everywhere, different augmentations per rank

    augment = PatchAugment(cfg.augment)
    loss_fn = ContrastiveLoss(cfg.moco.temperature, cfg.ifm.epsilon, cfg.ifm.alpha)
    logger = MetricsLogger(run_dir, resume_step=state.step if resume else None)
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, sched.epochs):
        record: dict[str, float] = {"epoch": epoch + 1}
        if sched.patch_level:
            record.update(_patch_epoch(state, store, cfg, epoch, augment, loss_fn, logger, info))
        if sched.graph_level:
            for sub in range(sched.graph_subepochs):
                record.update(_graph_epoch(state, store, cfg, epoch, sub, augment, loss_fn, logger, info))
        history.append(record)
        _save_checkpoint(ckpt, state, epoch + 1, cfg)
        D.print0(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
    logger.close()
    if info.is_main:
        summary = {"run": run_dir.name, "epochs": sched.epochs, "ifm_epsilon": cfg.ifm.epsilon,
                   "config_hash": cfg_io.config_hash(cfg), "history": history, "world_size": info.world_size,
                   "device": str(device)}
        files.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    D.barrier()
    return run_dir


def _patch_epoch(s: _State, store: PatchStore, cfg: PretrainConfig, epoch: int, augment: PatchAugment,
                 loss_fn: ContrastiveLoss, logger: MetricsLogger, info: D.DistInfo) -> dict[str, float]:
    plan = patch_epoch_plan(len(store.sids), s.model.n_landmarks, cfg.schedule.patch_batch, cfg.seed, epoch,
                            cfg.schedule.landmarks_per_epoch, info.rank, info.world_size)
    s.model.train()
    meter = Throughput()
    totals = {"loss": 0.0, "acc": 0.0}
    bar = tqdm(meter.wrap(loader(PatchStepDataset(store, plan), cfg.workers)), total=len(plan),
               desc=f"epoch {epoch + 1} patches", disable=not info.is_main, leave=False)
    for patches, landmark in bar:
        patches = patches.to(info.device, non_blocking=True)
        landmark = int(landmark)
        loc = s.model.landmark_coords[landmark].expand(patches.shape[0], 3)
        with torch.no_grad():
            v1, v2 = augment(patches), augment(patches)
        with autocast(info.device, cfg.amp):
            out = s.patch_ddp((v1, loc), (v2, loc), queue_id=s.model.queue_id(landmark))
            loss = loss_fn(out.pos, out.neg)
        optimizer_step(loss, s.opt_patch, s.scaler)
        s.sched_patch.step()
        loss = loss.detach()
        meter.step(patches.shape[0] * info.world_size)
        acc = float(instance_accuracy(out.pos.detach(), out.neg.detach()))
        totals["loss"] += float(loss)
        totals["acc"] += acc
        s.step += 1
        bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{acc:.2f}", patches_s=f"{meter.rate:.0f}")
        if s.step % cfg.log_every == 0:
            logger.log(s.step, **{"patch/loss": float(loss), "patch/acc": acc,
                                  "patch/lr": s.opt_patch.param_groups[0]["lr"],
                                  "patch/patches_per_s": meter.rate, "patch/data_wait": meter.data_wait_fraction})
    n = max(len(plan), 1)
    return {"patch_loss": totals["loss"] / n, "patch_acc": totals["acc"] / n, "patches_per_s": meter.rate,
            "patch_data_wait": meter.data_wait_fraction}


def _feature_views(feats: Tensor, cfg: PretrainConfig, scale: Tensor) -> Tensor:
    """One "feature"-mode view: node dropout (zeroed nodes) and Gaussian noise ``[N, F]`` → ``[N, F]``."""
    keep = (torch.rand(feats.shape[0], 1, device=feats.device) >= cfg.augment.node_drop).to(feats.dtype)
    return (feats + torch.randn_like(feats) * scale * cfg.augment.feature_noise) * keep


def _encode_cohort(s: _State, store: PatchStore, cfg: PretrainConfig, info: D.DistInfo) -> Tensor:
    """Frozen patch features of every subject without augmentation: ``[n_subjects, L, F]``."""
    feats = [s.model.node_features(x.to(info.device, non_blocking=True))
             for x in loader(SubjectDataset(store), cfg.workers, batch_size=1)]
    return torch.stack(feats)


def _graph_epoch(s: _State, store: PatchStore, cfg: PretrainConfig, epoch: int, sub: int, augment: PatchAugment,
                 loss_fn: ContrastiveLoss, logger: MetricsLogger, info: D.DistInfo) -> dict[str, float]:
    plan = graph_epoch_plan(len(store.sids), cfg.schedule.graph_batch, cfg.seed, epoch, sub,
                            info.rank, info.world_size)
    s.model.train()
    feature_mode = cfg.schedule.graph_views == "feature"
    if feature_mode and sub == 0:
        s.cached_feats = _encode_cohort(s, store, cfg, info)
        s.feat_scale = s.cached_feats.flatten(0, 1).std(0)
    meter = Throughput()
    totals = {"loss": 0.0, "acc": 0.0}
    batches = ([torch.tensor(b) for b in plan] if feature_mode
               else loader(SubjectBatchDataset(store, plan), cfg.workers))
    bar = tqdm(meter.wrap(batches), total=len(plan), desc=f"epoch {epoch + 1} graph {sub + 1}",
               disable=not info.is_main, leave=False)
    n_lm = s.model.n_landmarks
    for item in bar:
        if feature_mode:
            assert s.cached_feats is not None and s.feat_scale is not None
            feats = s.cached_feats[item].flatten(0, 1)
            f1 = _feature_views(feats, cfg, s.feat_scale)
            f2 = _feature_views(feats, cfg, s.feat_scale)
            g = len(item)
        else:
            patches = item.to(info.device, non_blocking=True)  # [G, L, 1, P, P, P]
            g = patches.shape[0]
            groups = torch.arange(g, device=info.device).repeat_interleave(n_lm)
            flat = patches.flatten(0, 1)
            with torch.no_grad(), autocast(info.device, cfg.amp):
                f1 = s.model.node_features(augment(flat, groups).view_as(patches)).float()
                f2 = s.model.node_features(augment(flat, groups).view_as(patches)).float()
        with autocast(info.device, cfg.amp):
            out = s.graph_ddp(s.model.graph_inputs(f1, g), s.model.graph_inputs(f2, g))
            loss = loss_fn(out.pos, out.neg)
        optimizer_step(loss, s.opt_graph, s.scaler)
        s.sched_graph.step()
        loss = loss.detach()
        meter.step(g * info.world_size)
        acc = float(instance_accuracy(out.pos.detach(), out.neg.detach()))
        totals["loss"] += float(loss)
        totals["acc"] += acc
        s.step += 1
        bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{acc:.2f}", subjects_s=f"{meter.rate:.1f}")
        logger.log(s.step, **{"graph/loss": float(loss), "graph/acc": acc,
                              "graph/subjects_per_s": meter.rate, "graph/data_wait": meter.data_wait_fraction})
    n = max(len(plan), 1)
    return {"graph_loss": totals["loss"] / n, "graph_acc": totals["acc"] / n, "subjects_per_s": meter.rate}


def _save_checkpoint(ckpt: Checkpointer, s: _State, epoch: int, cfg: PretrainConfig) -> None:
    ckpt.save({"epoch": epoch, "step": s.step, "model": s.model.state_dict(),
               "opt_patch": s.opt_patch.state_dict(), "opt_graph": s.opt_graph.state_dict(),
               "sched_patch": s.sched_patch.state_dict(), "sched_graph": s.sched_graph.state_dict(),
               "scaler": s.scaler.state_dict(), "rng": D.all_gather_objects(rng_state()),
               "config": cfg_io.to_dict(cfg),
               "saved_at": time.time()})


def _load_checkpoint(ckpt: Checkpointer, s: _State, device: torch.device) -> int:
    state = ckpt.load(map_location=device)
    s.model.load_state_dict(state["model"])
    s.opt_patch.load_state_dict(state["opt_patch"])
    s.opt_graph.load_state_dict(state["opt_graph"])
    s.sched_patch.load_state_dict(state["sched_patch"])
    s.sched_graph.load_state_dict(state["sched_graph"])
    s.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) != D.world_size():
        raise UserError(f"{ckpt.path}: saved by {len(state['rng'])} process(es); resume with as many")
    set_rng_state(state["rng"][D.rank()])
    s.step = state["step"]
    return int(state["epoch"])


def load_trained(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[ContextModel, CohortConfig,
                                                                                   PretrainConfig]:
    """The trained model of a run folder (eval mode), with its cohort and pretrain configs."""
    cohort, cfg = read_run_config(run_dir)
    ckpt = Checkpointer(run_dir)
    if not ckpt.exists():
        raise UserError(f"{run_dir}: no checkpoint.pt; the run has not finished an epoch yet")
    state = ckpt.load(map_location=device)
    n_landmarks = state["model"]["landmark_coords"].shape[0]
    model = ContextModel(cfg, torch.zeros(n_landmarks, 3), state["model"]["edge_index"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cohort, cfg
