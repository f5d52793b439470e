"""DDP cost of the per-landmark queues: patch-level patches/s with 64-deep vs 4096-deep queues, 2 processes.

Runs the real ``pretrain`` (patch level only, one epoch of ``--landmarks``
landmarks, demo config) under ``torchrun --nproc_per_node 2`` with gloo on the
CPU, once per queue depth, and prints patches/s (both ranks together, as
logged by rank 0) and the ratio deep / shallow. The queues hold the same keys
on every rank and ``copd_ifm.contrastive.distributed.wrap_ddp`` keeps them out
of DDP's buffer broadcasts, so the ratio should be near 1 (goal ≥ 0.9; with
broadcasting it was 0.2: 573 queues × 4096 × 128 float32 ≈ 1.2 GB per step).

Uses the demo patch store when it is built (``copd-ifm preprocess --cohort
demo``), else a fake store of the same geometry (48 subjects, 16³ at 2 mm).

    python benchmarks/ddp_queues.py [--landmarks 8] [--depths 64 4096]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from copd_ifm.cohort.config import CohortConfig, resolve_cohort
from copd_ifm.context.train import pretrain, resolve_pretrain_config
from copd_ifm.ct import store as st
from scale import fake_cohort, fake_store

PROCESSES = 2


def cohort_for(fake_root: Path | None) -> CohortConfig:
    """The demo cohort, or the fake store under ``fake_root`` with the demo's pretrain overrides."""
    demo = resolve_cohort("demo")
    if fake_root is None:
        return demo
    return dataclasses.replace(fake_cohort(fake_root, 48, 2.0, 16), pretrain_overrides=demo.pretrain_overrides)


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: a patch-level epoch of the real ``pretrain`` with ``args.depth``-deep queues."""
    cohort = cohort_for(args.fake_root)
    cfg = resolve_pretrain_config("ifm", cohort, overrides={
        "device": "cpu", "schedule.epochs": 1, "schedule.graph_level": False,
        "schedule.landmarks_per_epoch": args.landmarks, "moco.patch_queue": args.depth})
    pretrain(cohort, cfg, args.run_dir)


def run(depth: int, landmarks: int, fake_root: Path | None, run_dir: Path) -> dict:
    """Launch :func:`worker` under torchrun; the epoch record rank 0 wrote to ``summary.json``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
           __file__, "--worker", "--depth", str(depth), "--landmarks", str(landmarks), "--run-dir", str(run_dir)]
    if fake_root is not None:
        cmd += ["--fake-root", str(fake_root)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["history"][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--landmarks", type=int, default=8, help="landmarks in the timed patch epoch")
    ap.add_argument("--depths", type=int, nargs=2, default=[64, 4096], help="shallow and deep queue sizes")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of one run per depth (the machine's load drifts; medians over rounds are kept)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--fake-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="copd-ifm-ddp-") as tmp:
        fake_root = None
        if not (resolve_cohort("demo").store_path / st.INDEX).is_file():
            fake_root = Path(tmp) / "fake"
            fake_store(fake_root, 48, spacing_mm=2.0, patch_size=16)
        store = "fake store (48 subjects, 16³ at 2 mm)" if fake_root else "demo store"
        runs: dict[int, list[float]] = {d: [] for d in args.depths}
        for i in range(args.repeats):
            for d in args.depths:
                runs[d].append(run(d, args.landmarks, fake_root, Path(tmp) / f"q{d}-{i}")["patches_per_s"])
    shallow, deep = args.depths
    rates = {d: statistics.median(r) for d, r in runs.items()}
    ratio = statistics.median(b / a for a, b in zip(runs[shallow], runs[deep]))
    print(f"\n{PROCESSES} processes (torchrun, gloo, CPU, 1 thread each), {store}, patch level, "
          f"{args.landmarks} landmarks, demo model, median of {args.repeats} rounds "
          f"({', '.join(f'{d}: ' + ' / '.join(f'{x:.0f}' for x in r) for d, r in runs.items())} patches/s):\n")
    print(f"| queues {shallow} deep | queues {deep} deep | ratio deep / shallow, median over rounds (goal ≥ 0.9) |")
    print("|---|---|---|")
    print(f"| {rates[shallow]:.0f} patches/s | {rates[deep]:.0f} patches/s | {ratio:.2f} |")


if __name__ == "__main__":
    main()
