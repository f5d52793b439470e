"""Synthetic cohort speed and size: seconds per subject at 2 mm and 1 mm, and the whole demo cohort.

Prints (1) wall and CPU seconds per subject, one process, at 2 mm (``--n2``
subjects) and at 1 mm (``--n1`` subjects; 0 skips), with the mean image size and
the peak memory; (2) unless ``--skip-demo``, the wall time, the CPU time of this
process and its workers, and the disk size of the default demo cohort (48
subjects at 2 mm, ``--workers`` processes), against the targets of ≤ 60 s on 2
cores and ≤ 150 MB. On a machine shared with other jobs the wall time overstates;
CPU seconds / workers is what an idle machine would take.

    python benchmarks/synth.py [--n2 4] [--n1 2] [--workers 2] [--skip-demo]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from copd_ifm.cohort.synthetic import generate_cohort
from copd_ifm.cohort.synthetic_subject import PARTIAL_DIR, init_worker, make_subject


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def per_subject(spacing_mm: float, n: int, root: Path) -> None:
    if n < 1:
        return
    out = root / f"subjects-{spacing_mm:g}mm"
    for sub in ("images", "masks", PARTIAL_DIR):
        (out / sub).mkdir(parents=True)
    init_worker(spacing_mm)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(n):
        make_subject((str(out), index, 0, spacing_mm, 1.0))
    wall, cpu = (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n
    size = folder_mb(out / "images") / n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{spacing_mm:g} mm: {wall:.2f} s per subject wall, {cpu:.2f} s CPU (one process, {n} subjects); "
          f"image {size:.1f} MB per subject; peak memory so far {peak:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n2", type=int, default=4, help="subjects timed at 2 mm")
    parser.add_argument("--n1", type=int, default=2, help="subjects timed at 1 mm")
    parser.add_argument("--workers", type=int, default=2, help="processes for the demo cohort")
    parser.add_argument("--skip-demo", action="store_true", help="skip the 48-subject demo cohort")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        root = Path(tmp)
        per_subject(2.0, args.n2, root)
        per_subject(1.0, args.n1, root)
        if not args.skip_demo:
            start, cpu = time.perf_counter(), cpu_seconds()
            manifest = generate_cohort(root / "demo", n=48, seed=0, spacing_mm=2.0, workers=args.workers)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            size = folder_mb(manifest.parent)
            print(f"demo cohort (48 subjects, 2 mm, {args.workers} workers): {seconds:.1f} s wall "
                  f"(target ≤ 60 s on 2 cores, ratio {seconds / 60:.2f}); {cpu:.1f} CPU s in all, "
                  f"{cpu / args.workers:.1f} s per worker; {size:.0f} MB on disk "
                  f"(target ≤ 150 MB, ratio {size / 150:.2f})")


if __name__ == "__main__":
    main()
