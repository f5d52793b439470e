"""What a pretraining checkpoint holds, and its size, for a cohort's settings (default: the COPDGene config).

Builds the run's model on a 2-subject fake store with the cohort's grid (real store format, see
``scale.py``), takes one patch and one graph step so the optimisers hold their momentum buffers,
saves the state exactly as ``contrastive.loop.fit`` does and prints the size of each part.

    python benchmarks/checkpoint_size.py [--cohort copdgene] [--config ifm]
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch

from copd_ifm import config as cfg_io
from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.context.steps import ContextSteps
from copd_ifm.context.train import build_model, open_store, resolve_pretrain_config
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive.distributed import DistInfo
from copd_ifm.contrastive.runtime import grad_scaler, optimizer_step, rng_state
from scale import fake_store


def saved_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default="copdgene")
    ap.add_argument("--config", default="ifm")
    args = ap.parse_args()
    real = resolve_cohort(args.cohort)
    with tempfile.TemporaryDirectory(prefix="copd-ifm-ckpt-") as tmp:
        cohort = fake_store(Path(tmp) / "cohort", 2, real.spacing_mm, real.patch_size, real.landmark_step_mm)
        cfg = resolve_pretrain_config(args.config, cohort, overrides=["device=cpu", "workers=0",
                                                                     "schedule.patch_batch=2",
                                                                     "schedule.graph_batch=2",
                                                                     "schedule.graph_views=feature"])
        store = open_store(cohort)
        model = build_model(cfg, store)
        steps = ContextSteps(model, store, cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        phases = steps.phases()
        loss_fn, scaler = ContrastiveLoss.from_config(cfg.loss), grad_scaler(torch.device("cpu"), False)
        for phase in phases:
            out = phase.step(next(iter(phase.plan(0, 0)[0])))
            optimizer_step(loss_fn(out.pos, out.neg), phase.optimizer, scaler)
        state = model.state_dict()
        queues = {k: v for k, v in state.items() if k.endswith(".queue") or k.endswith(".queue_ptr")}
        parts = {
            "MoCo queues (patch: one per landmark; graph)": queues,
            "weights (query + key encoders, heads)": {k: v for k, v in state.items() if k not in queues},
            "optimiser state (SGD momentum buffers)": [p.optimizer.state_dict() for p in phases],
            "schedulers, RNG states, config": [[p.scheduler.state_dict() for p in phases], rng_state(),
                                               cfg_io.to_dict(cfg)],
        }
        sizes = {name: saved_bytes(obj) for name, obj in parts.items()}
    print(f"cohort {args.cohort} ({real.spacing_mm} mm, {real.patch_size}³ patches, {model.n_landmarks} landmarks), "
          f"config {args.config}: queue {cfg.moco.patch_queue} × {cfg.model.embed_dim} per landmark")
    print("| part | MB |\n| --- | --- |")
    for name, size in sizes.items():
        print(f"| {name} | {size / 1e6:.3g} |")
    print(f"| total | {sum(sizes.values()) / 1e6:.4g} |")


if __name__ == "__main__":
    main()
