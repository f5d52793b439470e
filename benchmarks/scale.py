"""Scale rehearsal: memory and speed of pretrain, extract and evaluate vs the number of subjects.

Builds fake patch stores of 100, 1 000 and 10 000 subjects in the real store
format (the store's own writers: ``prepare_store`` for config, landmarks and
graph, ``files.save_npy`` for patches and centres, ``write_record`` and
``merge_records`` for the index), with random int16 HU patches of 8 voxels at
4 mm (the anchor's 32 mm cube on the real 26 mm landmark lattice, which keeps
747 cubes at that resolution). Each measured stage runs in its own process,
which reports its peak resident memory (``VmHWM``) and the peak summed PSS of
it and its data-loading workers (with ``psutil``, when installed):

* pretrain: the real ``copd_ifm.context.train.pretrain`` (one epoch, tiny
  model, 256-deep queues) with every patch epoch cut to its first
  ``--patch-steps`` steps and every graph sub-epoch to ``--graph-steps``, so
  patches/s and subjects/s are measured on the same amount of work at every size;
* extract: ``extract_features`` of that run over the first ``--extract-max``
  subjects (default 100 at every size, through a store view that links the
  patch files: all 10 000 take over an hour on 2 shared cores; extraction
  streams one subject at a time and keeps 256 floats per subject);
* evaluate: ``evaluate`` of an n × 256 feature table (128 graph + 128 patch
  features of every subject) and of the store's densitometry on logFEV1pp and
  CLE, 5 folds, report and plots.

Memory must stay flat in the number of subjects: patches are memory-mapped.
Also prints the projected wall time of a full COPDGene run per GPU (formula
in :func:`projected_hours`). Stores are deleted after each size.

    python benchmarks/scale.py [--quick] [--sizes 100 1000 10000] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np

from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.ct import store as st
from copd_ifm.ct.preprocess import prepare_store
from evaluation import cohort_tables   # benchmarks/evaluation.py: manifest with outcomes, n × 256 features

#: A full COPDGene run (the anchor's schedule): subjects, landmarks, epochs, graph sub-epochs per epoch.
COPDGENE = {"subjects": 10_000, "landmarks": 575, "epochs": 50, "graph_subepochs": 10}
SPACING_MM, PATCH = 4.0, 8
STAGES = ("pretrain", "extract", "evaluate")


def fake_cohort(root: Path, n: int, spacing_mm: float = SPACING_MM, patch_size: int = PATCH,
                landmark_step_mm: float = 26.0) -> CohortConfig:
    """The cohort of a fake store under ``root`` (manifest ``root/manifest.csv``, store ``root/store``)."""
    return CohortConfig(name=f"fake{n}", manifest=str(root / "manifest.csv"), spacing_mm=spacing_mm,
                        patch_size=patch_size, landmark_step_mm=landmark_step_mm, store=str(root / "store"))


def fake_store(root: Path, n: int, spacing_mm: float = SPACING_MM, patch_size: int = PATCH,
               landmark_step_mm: float = 26.0, seed: int = 0) -> CohortConfig:
    """Write a store of ``n`` subjects with random HU patches ``[L, P, P, P]`` int16 in [-1024, 240].

    Subject ``s`` takes ``L`` consecutive patches at a random offset of a pool
    of ``4 L`` random patches: distinct files without drawing ``n L P³`` random
    numbers. Centres are the atlas corners; densitometry and outcomes come from
    :func:`evaluation.cohort_tables` (outcomes correlated with a latent severity).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    _, _, densitometry = cohort_tables(n, root, rng)
    cohort = fake_cohort(root, n, spacing_mm, patch_size, landmark_step_mm)
    store = cohort.store_path
    prepare_store(cohort, store)
    corners = np.load(store / st.LANDMARKS_NPY)
    n_lm = len(corners)
    pool = rng.integers(-1024, 241, size=(4 * n_lm, patch_size, patch_size, patch_size), dtype=np.int16)
    for row in densitometry.itertuples(index=False):
        start = int(rng.integers(0, 3 * n_lm))
        sha1 = files.save_npy(store / st.PATCHES / f"{row.sid}.npy", pool[start:start + n_lm])
        files.save_npy(store / st.CENTERS / f"{row.sid}.npy", corners.astype(np.float32))
        st.write_record(store, {"sid": row.sid, "status": "ok", "n_patches": n_lm, "sha1": sha1,
                                "laa950_pct": row.laa950_pct, "perc15_hu": row.perc15_hu,
                                "lung_volume_l": row.lung_volume_l, "mask_source": "fake", "error": ""})
    st.merge_records(store, list(densitometry["sid"]))
    return cohort


def store_view(cohort: CohortConfig, sids: list[str], folder: Path) -> CohortConfig:
    """A cohort whose store holds only ``sids``: shared files copied, index cut, patch and centre files linked."""
    source = cohort.store_path
    for name in (st.CONFIG, st.LANDMARKS_CSV, st.LANDMARKS_NPY, st.GRAPH):
        files.atomic_write_bytes(folder / name, (source / name).read_bytes())
    index = st.read_index(source / st.INDEX)
    st.write_csv(folder / st.INDEX, index[index["sid"].isin(sids)])
    for sub in (st.PATCHES, st.CENTERS):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for sid in sids:
            (folder / sub / f"{sid}.npy").symlink_to(source / sub / f"{sid}.npy")
    return dataclasses.replace(cohort, store=str(folder))


@contextmanager
def short_plans(patch_steps: int, graph_steps: int) -> Iterator[None]:
    """Inside: every patch epoch of ``pretrain`` is cut to its first ``patch_steps`` steps and every graph
    sub-epoch to its first ``graph_steps`` (plans and step counts; everything else is the real run)."""
    from copd_ifm.context import steps

    patch_plan, graph_plan = steps.patch_epoch_plan, steps.graph_epoch_plan
    with mock.patch.object(steps, "patch_epoch_plan", lambda *a, **k: patch_plan(*a, **k)[:patch_steps]), \
            mock.patch.object(steps, "graph_epoch_plan", lambda *a, **k: graph_plan(*a, **k)[:graph_steps]):
        yield


def projected_hours(patches_per_s: float, subjects_per_s: float, landmarks_measured: int,
                    run: dict[str, int] = COPDGENE) -> float:
    """Wall hours of a full run on one GPU (G GPUs under DDP: about this / G).

    ``T = E · N · L · (t_p + S · t_g)`` with ``t_p = 1 / patches_per_s`` (seconds per
    query patch of a patch-level step) and ``t_g = 1 / (subjects_per_s · L_measured)``
    (seconds per landmark patch of a graph-level step: two augmented views
    encoded by the frozen patch encoder plus the GCN step, per landmark); E epochs,
    N subjects, L landmarks, S graph sub-epochs per epoch.
    """
    t_p = 1.0 / patches_per_s
    t_g = 1.0 / (subjects_per_s * landmarks_measured)
    return run["epochs"] * run["subjects"] * run["landmarks"] * (t_p + run["graph_subepochs"] * t_g) / 3600


def peak_rss_mb() -> float:
    """Peak resident memory (MiB) of this process since it started: ``VmHWM`` (Linux), which unlike
    ``ru_maxrss`` does not carry over the size of the parent that forked it."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TreePss:
    """Peak summed proportional set size (MiB) of this process and its children (loader workers), sampled
    every ``every_s`` seconds in a thread; shared pages are split between the processes that map them, so
    the sum is the memory the stage really holds. NaN without ``psutil`` (not a dependency)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s, self.peak = every_s, float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = total / 2**20 if math.isnan(self.peak) else max(self.peak, total / 2**20)

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stage(name: str, root: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one measured stage in this process; returns its figures, peak memory and seconds included."""
    import torch

    torch.set_num_threads(args.threads)
    cohort = fake_cohort(root, n)
    start = time.perf_counter()
    out: dict[str, Any] = {}
    with TreePss() as tree:
        run_stage(name, cohort, root, n, args, out)
    out["seconds"] = time.perf_counter() - start
    out["rss_mb"], out["tree_pss_mb"] = peak_rss_mb(), tree.peak
    return out


def run_stage(name: str, cohort: CohortConfig, root: Path, n: int, args: argparse.Namespace,
              out: dict[str, Any]) -> None:
    """The work of :func:`stage`; its figures go into ``out``."""
    from copd_ifm.context.train import pretrain, resolve_pretrain_config
    from copd_ifm.evaluation.evaluate import evaluate
    from copd_ifm.evaluation.extract import extract_features

    run_dir = root / "pretrain"
    if name == "pretrain":
        cfg = resolve_pretrain_config("ifm", cohort, overrides={
            "device": "cpu", "schedule.epochs": 1, "schedule.graph_subepochs": 1, "schedule.landmarks_per_epoch": 1,
            "model.channels": [4, 8, 16], "moco.patch_queue": 256, "moco.graph_queue": 256})
        with short_plans(args.patch_steps, args.graph_steps):
            pretrain(cohort, cfg, run_dir)
        record = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["history"][-1]
        out.update(patches_per_s=record["patches_per_s"], subjects_per_s=record["subjects_per_s"],
                   data_wait=record["patch_data_wait"])
    elif name == "extract":
        if n > args.extract_max:
            sids = st.read_index(cohort.store_path / st.INDEX)["sid"].tolist()[:args.extract_max]
            cohort = store_view(cohort, sids, root / "view")
        extract_features(run_dir, cohort, device="cpu", workers=2)
        out["subjects"] = min(n, args.extract_max)
    else:
        # The n × 256 table of every subject: the extracted run covers only the extract subset.
        evaluate(cohort, [str(root / "run")], ["logFEV1pp", "CLE"], folds=5, out=root / "report")


def measure(name: str, root: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`stage` in a fresh Python process (its own peak memory); the result is its last stdout line."""
    cmd = [sys.executable, __file__, "--stage", name, "--root", str(root), "--n", str(n),
           "--patch-steps", str(args.patch_steps), "--graph-steps", str(args.graph_steps),
           "--extract-max", str(args.extract_max), "--threads", str(args.threads)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 and 1 000 subjects only")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--workdir", type=Path, default=None, help="where the fake stores go (default: a temp folder)")
    ap.add_argument("--patch-steps", type=int, default=8, help="patch-level steps of the pretrain slice")
    ap.add_argument("--graph-steps", type=int, default=2, help="graph-level steps of the pretrain slice")
    ap.add_argument("--extract-max", type=int, default=100,
                    help="extract this many subjects at every size (a store view; 2 shared cores are too slow for all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each stage")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.root, args.n, args)))
        return
    sizes = [s for s in args.sizes if s <= 1000] if args.quick else args.sizes
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="copd-ifm-scale-") as tmp:
        for n in sizes:
            root = Path(tmp) / f"n{n}"
            start = time.perf_counter()
            cohort = fake_store(root, n)
            build_s = time.perf_counter() - start
            size_gb = sum(f.stat().st_size for f in cohort.store_path.rglob("*.npy")) / 1e9
            n_lm = len(np.load(cohort.store_path / st.LANDMARKS_NPY))
            result = {name: measure(name, root, n, args) for name in STAGES}
            rows.append((n, n_lm, size_gb, build_s, result))
            print(f"{n} subjects: {json.dumps(result)}", flush=True)
            shutil.rmtree(root)
    print_table(rows, args)


def print_table(rows: list[tuple[int, int, float, float, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\nFake stores: {PATCH}³ int16 patches at {SPACING_MM:g} mm, {rows[0][1]} landmarks; pretrain slice "
          f"{args.patch_steps} patch steps (batch 128, capped at n) + {args.graph_steps} graph steps (16 subjects, "
          f"graph views: patch), model channels 4-8-16, queues 256; {args.threads} torch threads per stage. "
          "Peak memory: RSS of the stage's main process (VmHWM) / summed PSS of it and its loader workers "
          "(sampled every 0.5 s).\n")
    print("| subjects | store (GB) | write (s) | pretrain peak RSS / PSS (MiB) | patches/s | data wait | subjects/s "
          "| extract subjects | extract peak RSS / PSS (MiB) | extract subjects/s | evaluate peak RSS / PSS (MiB) | evaluate (s) |")
    print("|" + "---|" * 12)
    for n, _, size_gb, build_s, r in rows:
        p, x, e = r["pretrain"], r["extract"], r["evaluate"]
        print(f"| {n} | {size_gb:.2f} | {build_s:.0f} | {p['rss_mb']:.0f} / {p['tree_pss_mb']:.0f} "
              f"| {p['patches_per_s']:.0f} | {p['data_wait']:.0%} | {p['subjects_per_s']:.2f} | {x['subjects']} "
              f"| {x['rss_mb']:.0f} / {x['tree_pss_mb']:.0f} | {x['subjects'] / x['seconds']:.1f} "
              f"| {e['rss_mb']:.0f} / {e['tree_pss_mb']:.0f} | {e['seconds']:.0f} |")
    n, n_lm, _, _, r = rows[-1]
    p = r["pretrain"]
    run = COPDGENE
    print(f"\nProjected full COPDGene run per GPU ({run['subjects']} subjects × {run['landmarks']} landmarks × "
          f"{run['epochs']} epochs of 1 patch epoch + {run['graph_subepochs']} graph sub-epochs):\n"
          f"  T = E·N·L·(t_p + S·t_g) / 3600 h, t_p = 1 / (patches/s), t_g = 1 / (subjects/s × landmarks measured); "
          f"G GPUs under DDP: ≈ T / G.\n"
          f"  measured here ({n} subjects, CPU, {PATCH}³, tiny model — not the 32³ anchor model): "
          f"t_p = {1e3 / p['patches_per_s']:.2f} ms, t_g = {1e3 / (p['subjects_per_s'] * n_lm):.2f} ms "
          f"→ T = {projected_hours(p['patches_per_s'], p['subjects_per_s'], n_lm):.0f} h\n"
          "  GPU: plug in the patches/s and subjects/s of `benchmarks/gpu.py` (it prints T itself).")


if __name__ == "__main__":
    main()
