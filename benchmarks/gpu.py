"""What only a GPU can measure, in one run of at most 8 minutes on one GPU; a Markdown table.

1. CT patch level at 1 mm / 32³ with AMP: patches/s and the share of step
   time spent waiting for data (goal ≤ 10 %), from two epochs of the real
   ``pretrain`` on a fake store (random HU, real store format, real 575-landmark
   grid; see ``scale.py``) with each patch epoch cut to ``--patch-steps`` steps of
   the anchor's 128 patches; the second epoch is reported (the first warms up).
2. Graph level of the same run: subjects/s (each subject view is its 575
   augmented patches re-encoded by the frozen encoder, as in the anchor).
3. IFM / baseline patch step time (goal ≤ 1.02): ``ContextSteps.patch_step``
   plus the real loss and optimiser, ε = 0 and ε = 0.1 interleaved on one batch.
   The timed steps (forward, loss, backward), and one graph step after it, run under
   ``torch.cuda.set_sync_debug_mode("error")``: a host read inside them fails the run.
4. Vision SimCLR ResNet-18 at 32 px: images/s (goal ≥ 10 000 on an H100-class
   card), through ``benchmarks/vision.py``'s ``bench_method``.
5. The projected wall time of a full COPDGene run on this GPU (``scale.projected_hours``).

The patch encoder is ``--encoder`` (``model.encoder`` of the pretrain config);
a config without that field measures its only encoder and says so. With
``--quick`` (or without a GPU) the same code runs with small batches, a coarse
landmark grid and few steps (≤ 3 minutes on a CPU).

    python benchmarks/gpu.py [--quick] [--encoder anchor] [--out FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.config import ModelConfig, PretrainConfig
from copd_ifm.context.steps import ContextSteps
from copd_ifm.context.train import build_model, open_store, pretrain, resolve_pretrain_config
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive.distributed import DistInfo
from copd_ifm.contrastive.runtime import autocast, grad_scaler, setup_backends
from scale import fake_store, projected_hours, short_plans
from vision import _sync, bench_method

#: Settings of the full run (one GPU, ≤ 8 min) and of ``--quick`` (CPU smoke run, ≤ 3 min).
FULL = {"subjects": 128, "landmark_step_mm": 26.0, "patch_batch": 128, "graph_batch": 16, "patch_steps": 200,
        "graph_steps": 10, "ratio_steps": 30, "vision_batch": 512, "vision_steps": 40, "warmup": 2}
QUICK = {"subjects": 8, "landmark_step_mm": 104.0, "patch_batch": 8, "graph_batch": 2, "patch_steps": 3,
         "graph_steps": 1, "ratio_steps": 2, "vision_batch": 8, "vision_steps": 2, "warmup": 1}


def encoder_override(encoder: str) -> dict[str, str]:
    """``{"model.encoder": encoder}`` when the config has that field, else nothing (with a message)."""
    if "encoder" in {f.name for f in dataclasses.fields(ModelConfig)}:
        return {"model.encoder": encoder}
    print(f"note: this version's pretrain config has no model.encoder; --encoder {encoder} is ignored and the "
          f"config's only patch encoder is measured")
    return {}


def train_rates(cohort: CohortConfig, cfg: PretrainConfig, s: dict[str, int], run_dir: Path) -> dict[str, Any]:
    """Patches/s, patch data wait and subjects/s of the second of two short epochs of the real ``pretrain``."""
    with short_plans(s["patch_steps"], s["graph_steps"]):
        pretrain(cohort, cfg, run_dir)
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["history"][-1]


@contextlib.contextmanager
def host_reads_fail(device: torch.device, strict: bool) -> Iterator[None]:
    """Inside (CUDA, ``strict``): an operation that makes the host wait for the GPU raises, so a sync in the
    step fails the benchmark (``torch.cuda.set_sync_debug_mode("error")``). Elsewhere a no-op."""
    if not (strict and device.type == "cuda"):
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def ifm_ratio(cohort: CohortConfig, cfg: PretrainConfig, device: torch.device, steps: int,
              warmup: int) -> tuple[float, float]:
    """Median patch step time (s) with ε = 0 and with ε = 0.1, interleaved on one batch of the store; then one
    strict graph step."""
    store = open_store(cohort)
    model = build_model(cfg, store).to(device)
    context = ContextSteps(model, store, cfg, DistInfo(0, 1, 0, device))
    phase = context.phases()[0]
    batches, _ = phase.plan(0, 0)
    batch = next(iter(batches))
    losses = {eps: ContrastiveLoss.from_config(dataclasses.replace(cfg.loss, epsilon=eps)) for eps in (0.0, 0.1)}
    scaler = grad_scaler(device, cfg.amp)
    times: dict[float, list[float]] = {0.0: [], 0.1: []}
    for i in range(2 * (steps + warmup)):
        eps = 0.0 if i % 2 == 0 else 0.1
        _sync(device)
        start = time.perf_counter()
        with host_reads_fail(device, i >= 2 * warmup):
            with autocast(device, cfg.amp):
                out = context.patch_step(batch)
                loss = losses[eps](out.pos, out.neg)
            phase.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        # GradScaler.step reads its inf flag back (PyTorch's float16 AMP design), so it stays outside.
        scaler.step(phase.optimizer)
        scaler.update()
        _sync(device)
        if i >= 2 * warmup:
            times[eps].append(time.perf_counter() - start)
    graph = next((p for p in context.phases() if p.name == "graph"), None)
    if graph is not None:   # one graph step too, after a first one (it builds the lattice's edge list once)
        graph_batch = next(iter(graph.plan(0, 0)[0]))
        for strict in (False, True):
            with host_reads_fail(device, strict):
                with autocast(device, cfg.amp):
                    out = graph.step(graph_batch)
                    loss = losses[0.1](out.pos, out.neg)
                graph.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            scaler.step(graph.optimizer)
            scaler.update()
    return statistics.median(times[0.0]), statistics.median(times[0.1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches and few steps (CPU smoke run)")
    ap.add_argument("--encoder", default="anchor", help="model.encoder: anchor or compact")
    ap.add_argument("--workers", type=int, default=None, help="data-loading processes (default: the config's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("no CUDA device: running the --quick settings on the CPU")
    s = QUICK if args.quick or not cuda else FULL
    device = torch.device("cuda" if cuda else "cpu")
    setup_backends(device)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="copd-ifm-gpu-") as tmp:
        cohort = fake_store(Path(tmp) / "cohort", s["subjects"], spacing_mm=1.0, patch_size=32,
                            landmark_step_mm=s["landmark_step_mm"])
        n_lm = open_store(cohort).n_landmarks
        overrides: dict[str, Any] = {
            "device": device.type, "schedule.epochs": 2, "schedule.graph_subepochs": 1,
            "schedule.patch_batch": s["patch_batch"], "schedule.graph_batch": s["graph_batch"],
            "schedule.graph_views": "patch", **encoder_override(args.encoder)}
        if args.workers is not None:
            overrides["workers"] = args.workers
        cfg = resolve_pretrain_config("ifm", cohort, overrides=overrides)
        rates = train_rates(cohort, cfg, s, Path(tmp) / "run")
        base, ifm = ifm_ratio(cohort, cfg, device, s["ratio_steps"], s["warmup"])
    vision_base, _ = bench_method("simclr", device, s["vision_batch"], s["vision_steps"], warmup=s["warmup"])
    hours = projected_hours(rates["patches_per_s"], rates["subjects_per_s"], n_lm)
    amp = "AMP" if cuda and cfg.amp else "no AMP"
    encoder = getattr(cfg.model, "encoder", "the config's only one")
    table = "\n".join([
        f"Device: {name}. Patch encoder: {encoder}, channels "
        f"{cfg.model.channels}; 32³ patches at 1 mm, {n_lm} landmarks, {s['subjects']} fake subjects; {amp}; "
        f"{cfg.workers} loader workers; {time.perf_counter() - started:.0f} s in all.",
        "",
        "| measurement | value | goal |",
        "|---|---|---|",
        f"| CT patch level, batch {s['patch_batch']} ({s['patch_steps']} steps) | {rates['patches_per_s']:.3g} "
        f"patches/s | |",
        f"| CT patch level data wait | {rates['patch_data_wait']:.1%} | ≤ 10 % |",
        f"| CT IFM / baseline patch step time (ε 0.1 vs 0, interleaved, {s['ratio_steps']} each) | "
        f"{ifm / base:.3f} ({ifm * 1e3:.1f} / {base * 1e3:.1f} ms) | ≤ 1.02 |",
        f"| CT graph level, batch {s['graph_batch']} × {n_lm} landmarks, views re-encoded ({s['graph_steps']} steps) "
        f"| {rates['subjects_per_s']:.3g} subjects/s | |",
        f"| vision SimCLR ResNet-18 32 px, batch {s['vision_batch']} ({s['vision_steps']} steps) | "
        f"{s['vision_batch'] / vision_base:.3g} images/s | ≥ 10 000 (H100-class) |",
        f"| projected full COPDGene run on this device (scale.projected_hours) | {hours:.0f} h | |",
    ])
    print(table)
    if args.out is not None:
        files.atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
