"""Pretraining throughput on the demo cohort's patch store.

Prints patches/s at the patch level, subjects/s at the graph level (both view
modes) and the share of step time spent waiting for data, on CPU and, when a
GPU is present, on CUDA with AMP. Runs one short epoch per setting through the
real training loop (``copd_ifm.context.train.pretrain``) and reads the figures
it logs to ``summary.json``.

    python benchmarks/pretrain.py [--cohort demo] [--landmarks 24]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.context.train import pretrain, resolve_pretrain_config
from copd_ifm.ct.preprocess import preprocess_cohort


def run_once(cohort, device: str, graph_views: str, landmarks: int, out: Path) -> dict:
    cfg = resolve_pretrain_config("ifm", cohort, overrides=[
        "schedule.epochs=1", "schedule.graph_subepochs=1", f"schedule.landmarks_per_epoch={landmarks}",
        f"schedule.graph_views={graph_views}", f"device={device}"])
    start = time.perf_counter()
    pretrain(cohort, cfg, out)
    record = json.loads((out / "summary.json").read_text(encoding="utf-8"))["history"][-1]
    record["wall_s"] = time.perf_counter() - start
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default="demo")
    ap.add_argument("--landmarks", type=int, default=24, help="landmarks in the timed patch epoch")
    args = ap.parse_args()
    cohort = resolve_cohort(args.cohort)
    preprocess_cohort(cohort)  # generates the demo cohort first when it is missing
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
            for views in ("feature", "patch"):
                r = run_once(cohort, device, views, args.landmarks, Path(tmp) / f"{device}-{views}")
                print(f"{name} [{cohort.name}, {cohort.patch_size}^3, graph views={views}]: "
                      f"patch level {r['patches_per_s']:.0f} patches/s (data wait {r['patch_data_wait']:.0%}), "
                      f"graph level {r['subjects_per_s']:.2f} subjects/s, epoch wall {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
