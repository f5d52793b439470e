"""Feature-suppression studies: data generation speed, time of one study run, projected study time.

Prints
* Trifeature rendering rate (images/s, one process) at 32, 64 and 128 px, and the stand-in's;
* the wall and CPU time of one run of the study (pretraining + linear read-out +
  final InfoNCE) and of one untrained-encoder control at the study's scale, and
  the study time they project (× the study's number of runs and controls;
  target for ``ifm --scale small``: ≤ 60 minutes on 2 CPU cores). On a shared
  machine the CPU projection (CPU s / cores) is the better guide to what an
  idle machine gives.

    python benchmarks/studies.py [--study ifm] [--scale small] [--dataset trifeature] [--device auto]

Everything is written to a temporary folder (the dataset too), which is removed.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch


def render_rate(size: int, n: int = 300) -> float:
    from natural_images.trifeature import Trifeature, TrifeatureSpec

    ds = Trifeature(TrifeatureSpec(size=size), "train")
    start = time.perf_counter()
    for i in range(n):
        ds.image((i * 37) % len(ds))
    return n / (time.perf_counter() - start)


def standin_rate(n: int = 300) -> float:
    from natural_images.digits import DigitsStandin

    ds = DigitsStandin("train", n, size=32)
    ds.image(0)  # loads scikit-learn's digits and photos once
    start = time.perf_counter()
    for i in range(n):
        ds.image(i)
    return n / (time.perf_counter() - start)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (data-loader workers, generators)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="ifm", choices=["difficulty", "ifm", "correlation"])
    parser.add_argument("--scale", default="small", choices=["small", "paper"])
    parser.add_argument("--dataset", default=None, choices=["trifeature", "digits-standin", "stl-digits"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--skip-run", action="store_true", help="only the data generation rates")
    args = parser.parse_args()

    for size in (32, 64, 128):
        print(f"trifeature render {size:>3} px: {render_rate(size):7.0f} images/s (1 process)")
    print(f"digits-standin 32 px:     {standin_rate():7.0f} images/s (1 process)")
    if args.skip_run:
        return

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COPD_IFM_HOME"] = tmp
        from natural_images.studies import ensure_dataset, execute_run, load_study_config, plan_controls, plan_runs

        extra = {"dataset": args.dataset} if args.dataset else None
        study = load_study_config(args.study, args.scale, extra=extra)
        plans, controls = plan_runs(study), plan_controls(study)
        start = time.perf_counter()
        ensure_dataset(study, workers=2)
        data_s = time.perf_counter() - start
        start, cpu0, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
        row = execute_run(study, plans[0], Path(tmp) / "study", args.device)
        run_s, run_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        start, cpu0 = time.perf_counter(), cpu_seconds()
        if controls:
            execute_run(study, controls[0], Path(tmp) / "study", args.device)
        ctrl_s, ctrl_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    total = data_s + run_s * len(plans) + ctrl_s * len(controls)
    cores = os.cpu_count() or 1
    accs = ", ".join(f"{k.removeprefix('acc_')} {v:.1f}%" for k, v in row.items() if k.startswith("acc_"))
    print(f"device: {'cuda' if args.device != 'cpu' and torch.cuda.is_available() else 'cpu'}, "
          f"torch threads: {torch.get_num_threads()}")
    print(f"load average before the run: {load:.1f} on {cores} cores")
    print(f"{args.study} --scale {args.scale} on {study.dataset}: dataset generation {data_s:.0f} s; "
          f"one run ({plans[0].run_id}, {study.run.get('epochs')} epochs) {run_s:.0f} s wall, "
          f"{run_cpu:.0f} CPU s [{accs}]; one untrained control {ctrl_s:.0f} s wall, {ctrl_cpu:.0f} CPU s")
    target = " (target <= 60 min)" if (args.study, args.scale) == ("ifm", "small") else ""
    cpu_total = data_s + (run_cpu * len(plans) + ctrl_cpu * len(controls)) / cores
    print(f"projected study time, {len(plans)} runs + {len(controls)} controls: {total / 60:.1f} min from wall "
          f"time; {cpu_total / 60:.1f} min from CPU time / {cores} cores{target}")


if __name__ == "__main__":
    main()
