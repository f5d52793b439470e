"""A vision pretraining run: its config resolved by name, and its run folder (what other stages read back).

``RUN/config.yaml`` (resolved :class:`VisionConfig`), ``RUN/checkpoint.pt``
(model, optimiser, scheduler, scaler, RNG states, per-epoch history),
``RUN/summary.json`` (one JSON object: run facts, last/best kNN top-1, and a
``linear`` entry per read-out dataset), ``RUN/metrics.csv`` + ``RUN/tb``
(step-level scalars), ``RUN/epochs.csv`` (per epoch) + ``RUN/curves.png`` (at the end),
``RUN/linear.json`` / ``linear.csv`` / ``linear.png`` (linear read-out).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.rundir import EPSILON_KEY, OLD_EPSILON_KEYS
from copd_ifm.errors import UserError
from natural_images.config import VISION_CONFIG_DIR, VisionConfig
from natural_images.datasets import dataset_spec, image_sizes
from natural_images.methods import build_model


def default_config_name(dataset: str | None, method: str | None) -> str:
    """``DATASET_METHOD`` (default cifar10, simclr): the config ``vision pretrain`` uses without ``--config``;
    ``adco`` without an AdCo config of its own takes the dataset's MoCo config (``--method adco`` overrides it).

    An unknown dataset, or a known one without a config for ``method``, is a one-line UserError.
    """
    dataset, method = dataset or "cifar10", method or "simclr"
    dataset_spec(dataset)
    name = f"{dataset}_{method}"
    if method == "adco" and not (VISION_CONFIG_DIR / f"{name}.yaml").is_file():
        name = f"{dataset}_moco"  # AdCo is MoCo-v2 with a learnt bank: the dataset's MoCo settings, adco: defaults
    if not (VISION_CONFIG_DIR / f"{name}.yaml").is_file():
        have = sorted(p.stem.removeprefix(f"{dataset}_") for p in VISION_CONFIG_DIR.glob(f"{dataset}_*.yaml"))
        raise UserError(f"--dataset {dataset} --method {method}: no default config {name}.yaml in "
                        f"{VISION_CONFIG_DIR} (methods with one: {', '.join(have) or 'none'}); pass --config "
                        f"NAME or a YAML path (e.g. --config cpu_tiny --dataset {dataset})")
    return name


def load_vision_config(name: str, extra: Mapping[str, Any] | None = None,
                       overrides: cfg.Overrides = None) -> VisionConfig:
    """Config ``name`` (a YAML path or a name in ``configs/vision``), then CLI fields ``extra`` (nested), then
    ``--set`` overrides.

    Sizes the dataset reads from its own files (``folder``, Trifeature, digits)
    and the class-list path are pinned in the result, so the run's saved
    ``config.yaml`` rebuilds the same model wherever the data is later.
    """
    config = cfg.load(VisionConfig, cfg.named_config("vision", name), overrides, extra)
    if dataset_spec(config.data.dataset).probe is not None:
        config.data.crop_size, config.data.eval_size = image_sizes(config.data)
    if config.data.classes:
        config.data.classes = str(files.expand_home(config.data.classes).resolve())
    return config


def load_run_config(run_dir: str | Path) -> VisionConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found: --run must be a folder written by 'copd-ifm vision pretrain'")
    return cfg.load(VisionConfig, path)


def load_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, VisionConfig]:
    """The whole pretrained model of a run (backbone and heads; eval mode) and the run's config."""
    run_cfg = load_run_config(run_dir)
    ckpt = Checkpointer(run_dir)
    if not ckpt.exists():
        raise UserError(f"{ckpt.path} not found: the run has not finished an epoch yet")
    model = build_model(run_cfg, image_sizes(run_cfg.data)[0])
    state = ckpt.load("cpu")["model"]
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:  # e.g. an AdCo run saved before its bank had momentum (bank_velocity, bank_filled)
        raise UserError(f"{ckpt.path}: lacks {', '.join(missing[:3])} that the model of its config.yaml has "
                        f"(saved by an older version of {run_cfg.method}); retrain the run")
    model.load_state_dict(state)
    return model.to(device).eval(), run_cfg


def load_encoder(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, VisionConfig]:
    """The pretrained backbone ``[B, 3, H, W] → [B, F]`` of a run (eval mode) and the run's config."""
    model, run_cfg = load_model(run_dir, device)
    return model.encoder, run_cfg


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


SUMMARY_DIGITS = 6


def rounded(value: Any, digits: int = SUMMARY_DIGITS) -> Any:
    """``value`` with every float (also inside dicts and lists) rounded to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def update_summary(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``RUN/summary.json`` (atomically, floats to 6 significant digits) and return it.

    A summary of an older run folder loses its old ε key once ``loss.epsilon`` is written."""
    old = read_summary(run_dir)
    if EPSILON_KEY in fields:
        old = {k: v for k, v in old.items() if k not in OLD_EPSILON_KEYS}
    summary = rounded({**old, **fields})
    files.atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def default_run_dir(config: VisionConfig) -> Path:
    """``runs/vision/<dataset>_<method>_<arch>_eps<ε>_seed<seed>`` under the working directory."""
    return Path("runs") / "vision" / (f"{config.data.dataset}_{config.method}_{config.model.arch}"
                                      f"_eps{config.loss.epsilon:g}_seed{config.seed}")
