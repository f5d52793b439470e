"""``copd-ifm pretrain``: context-aware MoCo-v2 with IFM on a patch store (CPU, one GPU or torchrun DDP).

An adapter of the engine loop (:func:`copd_ifm.contrastive.loop.fit`): it resolves
the config, checks the store, builds the model and hands ``fit`` the patch and
graph phases of :class:`~copd_ifm.context.steps.ContextSteps`. Each epoch is one
patch epoch followed by ``graph_subepochs`` graph epochs, as in the anchor. A
checkpoint is written atomically after every epoch; ``--resume`` continues a
killed run exactly (same batches, same random augmentations) with its saved config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from copd_ifm import config as cfg_io
from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.model import ContextModel
from copd_ifm.context.steps import ContextSteps
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.loop import fit
from copd_ifm.contrastive.rundir import CONFIG_FILE, RunContract, start_run, summary_fields, write_config
from copd_ifm.contrastive.runtime import seed_everything, setup_backends
from copd_ifm.ct.store import PatchStore
from copd_ifm.errors import UserError


def resolve_pretrain_config(spec: str, cohort: CohortConfig, overrides: cfg_io.Overrides = None) -> PretrainConfig:
    """Pretrain YAML (name in ``configs/pretrain`` or path; ``base:`` inherited) → the cohort's
    ``pretrain_overrides`` → ``overrides`` (CLI flags and ``--set``)."""
    path = cfg_io.named_config("pretrain", spec)
    data = cfg_io.apply_overrides(cfg_io.read_config(path), cohort.pretrain_overrides)
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


def run_document(cohort: CohortConfig, cfg: PretrainConfig) -> dict[str, Any]:
    """``RUN/config.yaml``: the resolved cohort and pretrain configs, with the pretrain config's hash."""
    return {"pretrain": cfg_io.to_dict(cfg), "cohort": cfg_io.to_dict(cohort), "config_hash": cfg_io.config_hash(cfg)}


def read_run_config(run_dir: str | Path) -> tuple[CohortConfig, PretrainConfig]:
    """The cohort and pretrain configs of :func:`run_document` saved in a run folder."""
    path = Path(run_dir) / CONFIG_FILE
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


def _check_cohort_size(store: PatchStore, world: int, cohort: CohortConfig) -> None:
    n = len(store.sids)
    need = max(2 * world, 2)
    if n < need:
        raise UserError(f"{cohort.store_path}: {n} preprocessed subject(s), pretraining needs at least {need} "
                        f"(2 per process); add subjects or fix the failures in failures.csv")


#: ``RUN/config.yaml`` of a CT run: the pretrain section may change only where and how fast it runs
#: (``schedule.epochs`` upwards with ``--extend``).
CONTRACT = RunContract(PretrainConfig, runtime=("device", "workers", "log_every"), epochs="schedule.epochs",
                       section="pretrain")


def pretrain(cohort: CohortConfig, cfg: PretrainConfig, run_dir: str | Path, resume: bool = False,
             extend: bool = False) -> Path:
    """Train the context-aware model on ``cohort``'s patch store; returns the run folder.

    ``resume`` continues the run's last checkpoint and refuses a config other than
    the saved one; ``extend`` also allows more ``schedule.epochs`` (the cosine
    schedules are recomputed over the new length, so the learning rate continues
    from the longer schedule's value at that step, not from the shorter one's).
    """
    with D.session(cfg.device) as info:
        setup_backends(info.device)
        store = open_store(cohort)
        _check_cohort_size(store, info.world_size, cohort)
        run_dir = start_run(run_dir, cfg, CONTRACT, resume, extend, document=run_document(cohort, cfg))
        model = build_model(cfg, store).to(info.device)
        if not resume:
            seed_everything(cfg.seed + info.rank)  # same weights everywhere, different augmentations per rank
        phases = ContextSteps(model, store, cfg, info).phases()
        fit(model, phases, ContrastiveLoss.from_config(cfg.loss), run_dir, cfg.schedule.epochs, info.device,
            amp=cfg.amp, resume=resume, config=cfg_io.to_dict(cfg),
            report=lambda history: _write_summary(run_dir, cfg, history, info))
    return run_dir


def save_untrained(cohort: CohortConfig, cfg: PretrainConfig, run_dir: str | Path) -> Path:
    """A run folder holding the model of ``cfg`` before any training step (the seed's initial weights, those
    :func:`pretrain` starts from): the untrained-encoder control, extracted and evaluated like any run."""
    run_dir = Path(run_dir)
    model = build_model(cfg, open_store(cohort))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, run_document(cohort, cfg))
    Checkpointer(run_dir).save({"epoch": 0, "step": 0, "model": model.state_dict(), "config": cfg_io.to_dict(cfg)})
    return run_dir


def _write_summary(run_dir: Path, cfg: PretrainConfig, history: list[dict[str, Any]], info: D.DistInfo) -> None:
    summary = {"run": run_dir.name, **summary_fields(cfg, cfg.loss.epsilon, cfg.schedule.epochs, history[-1]["epoch"],
                                                     info.world_size, info.device), "history": history}
    files.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))


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
