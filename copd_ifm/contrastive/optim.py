"""Optimiser and per-step learning-rate schedule of every training phase."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "sgd"              # sgd | adam | adamw
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"       # cosine | constant
    warmup_epochs: float = 0.0

    def validate(self) -> None:
        if self.name not in {"sgd", "adam", "adamw"}:
            raise ValueError(f"optim.name must be sgd, adam or adamw, got {self.name!r}")
        if self.schedule not in {"cosine", "constant"}:
            raise ValueError(f"optim.schedule must be cosine or constant, got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


def build_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (MoCo) or Adam/AdamW (SimCLR), from ``cfg``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up for ``warmup_epochs``, then cosine to 0 over ``total_steps`` (or constant)."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
