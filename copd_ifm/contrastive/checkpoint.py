"""Run folders and their atomic ``checkpoint.pt`` (tensors and plain values only)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from copd_ifm.contrastive import distributed as D
from copd_ifm.errors import UserError
from copd_ifm.files import save_torch


class Checkpointer:
    """``RUN/checkpoint.pt``: written atomically by rank 0, read with ``weights_only=True`` so that
    opening somebody else's run folder can never execute code."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "checkpoint.pt"

    def save(self, state: dict[str, Any]) -> None:
        if D.is_main():
            save_torch(self.path, state)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        try:
            return torch.load(self.path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UserError(f"{self.path}: refused, it holds objects other than tensors and plain values (loading "
                            f"it could run code); use checkpoints written by copd-ifm") from exc
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
