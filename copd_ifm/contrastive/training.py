"""Training machinery shared by the CT pipeline and ``natural_images``.

Optimiser and per-step cosine schedule, seeding, AMP, atomic checkpoints that
resume a killed run exactly (model, optimiser, scheduler, grad scaler, RNG
states, data-order position), TensorBoard + CSV logging and a throughput meter
that measures the share of step time spent waiting for data. Rank-0-only
output under DDP.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from copd_ifm.contrastive import distributed as D
from copd_ifm.errors import UserError


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
    """Per-step schedule: linear warm-up for ``warmup_epochs``, then cosine to 0 (or constant)."""
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_backends(device: torch.device) -> None:
    """cuDNN autotuning on CUDA (input shapes are fixed per level)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when ``enabled``; a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=enabled and device.type == "cuda")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and step through the (possibly disabled) grad scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Checkpointer:
    """Atomic ``checkpoint.pt`` in a run folder; written by rank 0 only."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "checkpoint.pt"

    def save(self, state: dict[str, Any]) -> None:
        if not D.is_main():
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        try:
            return torch.load(self.path, map_location=map_location, weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise UserError(f"{self.path}: checkpoint unreadable ({exc}); delete it to restart the run") from exc


def prepare_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """Create the run folder; refuse to overwrite a started run unless ``resume``."""
    run_dir = Path(run_dir)
    ckpt = Checkpointer(run_dir)
    if resume and not ckpt.exists():
        raise UserError(f"--resume: no checkpoint in {run_dir} (drop --resume to start a new run)")
    if not resume and ckpt.exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    return run_dir


class MetricsLogger:
    """Scalars to TensorBoard (``RUN/tb``) and to ``RUN/metrics.csv``; silent off rank 0."""

    def __init__(self, run_dir: str | Path, enabled: bool | None = None, resume_step: int | None = None) -> None:
        """``resume_step``: the step of the checkpoint a resumed run starts from; CSV rows logged
        after it (by the killed run) are dropped so that no step appears twice."""
        self.enabled = D.is_main() if enabled is None else enabled
        self.csv_path = Path(run_dir) / "metrics.csv"
        self._writer = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
            if resume_step is not None and self.csv_path.exists():
                self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        with self.csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp{os.getpid()}")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(kept)
        os.replace(tmp, self.csv_path)

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)  # type: ignore[union-attr]
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "time", "key", "value"])
            for key, value in metrics.items():
                writer.writerow([row["step"], row["time"], key, f"{value:.6g}"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Throughput:
    """Items per second and the share of time spent waiting for data, over a window of steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items, self.wait, self.total = 0, 0.0, 0.0
        self._mark = time.perf_counter()

    def wrap(self, iterable: Any) -> Iterator[Any]:
        """Iterate ``iterable``, timing how long each ``next`` blocks."""
        it = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            yield item

    def step(self, n_items: int) -> None:
        now = time.perf_counter()
        self.total += now - self._mark
        self._mark = now
        self.items += n_items

    @property
    def rate(self) -> float:
        return self.items / self.total if self.total > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return min(self.wait / self.total, 1.0) if self.total > 0 else 0.0
