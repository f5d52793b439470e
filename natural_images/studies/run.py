"""Running a study: its dataset, each pretraining run and untrained control, and the finished results."""
from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive import info_nce_from_similarities
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.runtime import loader_workers, seed_everything
from copd_ifm.errors import UserError
from copd_ifm.studies import folder as study_folder
from copd_ifm.studies.folder import check_or_save_study, read_result, write_result
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.runner import check_shard, raise_if_failed, run_shard
from natural_images.augment import TwoViews, train_transform
from natural_images.backbones import resolve_stem
from natural_images.config import DataConfig, VisionConfig
from natural_images.datasets import (build_dataset, dataset_labels, dataset_root, dataset_spec, image_sizes,
                                     label_names)
from natural_images.digits import DigitsSpec, make_digits
from natural_images.feature_datasets import read_folder_meta
from natural_images.linear import linear_readout
from natural_images.methods import build_model
from natural_images.run import load_model
from natural_images.studies.config import StudyConfig
from natural_images.studies.plan import plan_controls, plan_runs, run_config
from natural_images.studies.report import aggregate
from natural_images.train import pretrain
from natural_images.trifeature import TrifeatureSpec, make_trifeature

log = logging.getLogger(__name__)

# Study fields that may change between invocations on one study folder (where data lives, loader processes).
RUNTIME_FIELDS = ("run.data.root", "run.data.workers", "digits.raw_root", "keep_checkpoints")

def ensure_dataset(study: StudyConfig, workers: int = 1) -> Path:
    """The study's dataset folder under ``run.data.root``, generated if missing; a foreign one is refused.

    Concurrent shards serialise on ``ROOT/.<dataset>.lock`` (a file lock):
    the first generates the data, the others then find it ready.
    """
    root = dataset_root(study.dataset, cfg.from_dict(DataConfig, study.run.get("data", {}), "run.data").root_path)
    folder = root / study.dataset
    if study.dataset == "trifeature":
        t = study.trifeature
        spec: Any = TrifeatureSpec(size=t.size, seed=t.seed, per_combination=t.per_combination,
                                   test_per_combination=t.test_per_combination)
        make: Any = make_trifeature
        keys = ("size", "seed", "per_combination", "test_per_combination")
    else:
        d = study.digits
        raw = str(files.expand_home(d.raw_root))
        spec = DigitsSpec(source="stl" if study.dataset == "stl-digits" else "standin", data_root=raw,
                          size=d.size, seed=d.seed, n_train=d.n_train, n_test=d.n_test)
        make = make_digits
        keys = ("source", "size", "seed") + (("n_train", "n_test") if spec.source == "standin" else ())
    wanted = {k: getattr(spec, k) for k in keys}
    root.mkdir(parents=True, exist_ok=True)
    with files.file_lock(root / f".{study.dataset}.lock", f"the {study.dataset} dataset"):
        if (folder / "dataset.json").is_file():
            built = read_folder_meta(folder)["construction"]
            diff = sorted(k for k in wanted if built.get(k) != wanted[k])
            if diff:
                raise UserError(f"{folder}: built with {diff[0]}={built.get(diff[0])!r}, the study needs "
                                f"{wanted[diff[0]]!r}; delete the folder or set run.data.root to another folder")
            return folder
        log.info("generating %s in %s", study.dataset, folder)
        make(folder, spec, workers=workers)
    return folder


@torch.no_grad()
def final_infonce(run_dir: str | Path, batches: int, device: torch.device | str = "cpu") -> float:
    """Mean plain InfoNCE (ε = 0, β = 0) at the run's τ over ``batches`` training batches.

    Encoder and head in eval mode, batches of ``min(batch_size, images)``
    pairs of two augmented views of the pretraining split, in a fixed order.
    Composes the run's own pieces: its config, model, checkpoint and augmentation.
    """
    model, run_cfg = load_model(run_dir, device)
    crop = image_sizes(run_cfg.data)[0]
    spec = dataset_spec(run_cfg.data.dataset)
    views = TwoViews(train_transform(run_cfg.augment, run_cfg.method, crop, spec.mean, spec.std))
    dataset = build_dataset(run_cfg.data, "pretrain", views)
    torch.manual_seed(run_cfg.seed)
    loader = DataLoader(dataset, batch_size=min(run_cfg.batch_size, len(dataset)), shuffle=True,
                        drop_last=True, num_workers=loader_workers(run_cfg.data.workers),
                        generator=torch.Generator().manual_seed(run_cfg.seed))
    losses = []
    for (x1, x2), _ in itertools.islice(loader, batches):
        pos, neg = model(x1.to(device), x2.to(device))
        losses.append(float(info_nce_from_similarities(pos, neg, run_cfg.loss.temperature)))
    return sum(losses) / len(losses)


def majority_shares(dataset: Dataset) -> dict[str, float]:
    """Per label column: the share (%) of the most frequent class, i.e. the accuracy of always guessing it."""
    labels = dataset_labels(dataset)
    shares = {}
    for col, name in enumerate(label_names(dataset)):
        known = labels[:, col][labels[:, col] >= 0]
        shares[name] = 100.0 * float(torch.bincount(known).max()) / max(len(known), 1)
    return shares


def _measure(study: StudyConfig, plan: RunPlan, config: VisionConfig, run_dir: Path, device: str,
             started: float, train_loss: float | None) -> dict[str, Any]:
    """Read out and measure a run whose ``checkpoint.pt`` holds its encoder; writes ``result.json`` last."""
    readout = linear_readout(run_dir, device=device)
    with D.session(device) as info:
        loss = final_infonce(run_dir, study.loss_batches, info.device)
    images = len(build_dataset(config.data, "pretrain"))  # type: ignore[arg-type]
    pairs = min(config.batch_size, images)
    crop = image_sizes(config.data)[0]
    row: dict[str, Any] = {
        "run_id": plan.run_id, "seed": config.seed, "dataset": config.data.dataset,
        "temperature": config.loss.temperature, "hcl_beta": config.loss.hcl_beta, "tau_plus": config.loss.tau_plus,
        "ifm_eps": config.loss.epsilon, "ifm_alpha": config.loss.alpha,
        "epochs": 0 if plan.control else config.epochs, "arch": config.model.arch, "width": config.model.width,
        "stem": resolve_stem(config.model.stem, crop), "image_size": crop, "train_images": images,
        "train_loss": train_loss, "final_loss": round(loss, 6), "loss_pairs": pairs,
        "chance_loss": round(math.log(2 * pairs - 1), 6), "wall_s": round(time.time() - started, 1),
    }
    for feature, top1 in readout["top1"].items():
        row[f"acc_{feature}"] = round(top1, 4)
        row[f"err_{feature}"] = round(100.0 - top1, 4)
    for feature, share in majority_shares(build_dataset(config.data, "test")).items():
        row[f"chance_{feature}"] = round(share, 4)
    write_result(run_dir, row)
    if not study.keep_checkpoints:  # the report needs result.json only; checkpoints are ~100 MB each
        Checkpointer(run_dir).path.unlink(missing_ok=True)
    return row


def execute_run(study: StudyConfig, plan: RunPlan, out: Path, device: str = "auto") -> dict[str, Any]:
    """Pretrain (or resume) one run, or set up an untrained control, then read out and measure it.

    Writes ``result.json`` last and returns the result row; a finished run only returns its row.
    """
    done = read_result(out, plan.run_id)
    if done is not None:
        return done
    run_dir = study_folder.run_dir(out, plan.run_id)
    config = run_config(study, plan)
    started = time.time()
    train_loss = train_or_init(config, plan, run_dir, device)
    return _measure(study, plan, config, run_dir, device, started, train_loss)


def train_or_init(config: VisionConfig, plan: RunPlan, run_dir: Path, device: str) -> float | None:
    """Pretrain (or resume) the run and return its final loss; a control gets its untrained model (None)."""
    if plan.control:
        save_untrained(config, run_dir)
        return None
    return pretrain(config, run_dir, resume=Checkpointer(run_dir).exists(), device=device).get("loss")


def save_untrained(config: VisionConfig, run_dir: Path) -> None:
    """A run folder whose checkpoint holds the untrained model: the initial weights pretraining would start from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_resolved(config, run_dir / "config.yaml")
    seed_everything(config.seed)  # as pretrain seeds rank 0 before building the model
    model = build_model(config, image_sizes(config.data)[0])
    Checkpointer(run_dir).save({"epoch": 0, "model": model.state_dict()})


def run_study(study: StudyConfig, out: str | Path, shard: tuple[int, int] = (0, 1), device: str = "auto",
              workers: int = 1) -> pd.DataFrame:
    """Run this shard's unfinished runs and controls, then aggregate every finished run; returns the table."""
    out = Path(out)
    plans = plan_runs(study) + plan_controls(study)
    for plan in plans:
        run_config(study, plan)  # every run's config is valid before hours of compute start
    check_shard(shard)
    # seeds, controls and sweeps may grow (new runs join the study); scale names only the config it came from
    check_or_save_study(study, out, growable=("seeds", "controls", "sweeps", "scale"), runtime=RUNTIME_FIELDS)
    ensure_dataset(study, workers)
    failed = run_shard(plans, out, lambda plan: execute_run(study, plan, out, device), shard, f"{study.study} study")
    table = aggregate(study, out)
    raise_if_failed(failed)
    return table
