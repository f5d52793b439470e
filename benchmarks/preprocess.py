"""Speed of ``copd-ifm preprocess``: seconds per subject by stage, at 1 mm and for the 2 mm demo.

Targets (issue #4): <= 20 s per subject at 1 mm (about 380 x 380 x 320 voxels)
on 2 cores, and >= 1 subject/s for the 2 mm demo cohort with 2 workers.

Inputs are generated in a temporary folder with the synthetic cohort
generator (``$COPD_IFM_HOME`` is not touched):

* 1 mm: one synthetic subject, padded with air to 384 x 384 x 320 voxels (a
  scanner's field of view around the body), preprocessed with the ``copdgene``
  cohort settings (patch 32) in one process (ITK on all cores), once with the
  manifest's lung mask and once with threshold segmentation; then a copy at
  0.7 x 0.7 x 0.8 mm with LPS axes (as a scanner writes it: resampled and
  reoriented on reading) with threshold segmentation;
* demo: ``--n-demo`` subjects with the ``demo`` cohort settings (2 mm, patch 16)
  and ``--workers`` processes, for each ``--downsample`` registration spacing.

Usage: ``python benchmarks/preprocess.py [--n-demo 48] [--workers 2] [--downsample 4,6] [--skip-1mm]``
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.cohort.synthetic import generate_cohort
from copd_ifm.ct.preprocess import preprocess_cohort
from copd_ifm.ct.store import STAGES

FOV_1MM = (384, 384, 320)
NATIVE_MM = (0.7, 0.7, 0.8)        # a typical COPDGene reconstruction


def _pad_to(image: sitk.Image, size: tuple[int, int, int], value: float) -> sitk.Image:
    extra = [max(0, s - n) for s, n in zip(size, image.GetSize())]
    return sitk.ConstantPad(image, [e // 2 for e in extra], [e - e // 2 for e in extra], value)


def _stage_table(index: pd.DataFrame) -> str:
    ok = index[index["status"] == "ok"]
    cols = [f"{s}_s" for s in STAGES] + ["seconds", "cpu_s"]
    means = ok[cols].mean()
    return "  ".join(f"{c.removesuffix('_s')} {means[c]:.2f}" for c in cols)


def bench_1mm(tmp: Path) -> None:
    manifest = generate_cohort(tmp / "synth1mm", n=1, seed=0, spacing_mm=1.0, workers=1)
    table = pd.read_csv(manifest, dtype=str)
    row = table.iloc[0]
    ct = _pad_to(sitk.ReadImage(str(manifest.parent / row["image"])), FOV_1MM, -1000)
    mask = _pad_to(sitk.ReadImage(str(manifest.parent / row["lung_mask"])), FOV_1MM, 0)
    sitk.WriteImage(ct, str(tmp / "ct1mm.nii.gz"))
    sitk.WriteImage(mask, str(tmp / "mask1mm.nii.gz"))
    native = sitk.DICOMOrient(sitk.Resample(ct, [int(n / s) for n, s in zip(ct.GetSize(), NATIVE_MM)], sitk.Transform(),
                                            sitk.sitkLinear, ct.GetOrigin(), NATIVE_MM, ct.GetDirection(), -1000,
                                            sitk.sitkInt16), "LPS")
    sitk.WriteImage(native, str(tmp / "native.nii.gz"))
    pd.DataFrame([{"sid": "S1MM", "image": "ct1mm.nii.gz", "lung_mask": "mask1mm.nii.gz"}]).to_csv(
        tmp / "manifest1mm.csv", index=False)
    pd.DataFrame([{"sid": "NATIVE", "image": "native.nii.gz"}]).to_csv(tmp / "manifest-native.csv", index=False)
    print(f"1 mm subject: {ct.GetSize()} voxels at {ct.GetSpacing()[0]} mm (synthetic SYN0001 padded with air); "
          f"native copy {native.GetSize()} at {NATIVE_MM} mm, LPS axes")
    runs = [("manifest1mm.csv", "auto", "1 mm, mask from manifest"),
            ("manifest1mm.csv", "threshold", "1 mm, threshold mask    "),
            ("manifest-native.csv", "threshold", "native → 1 mm, threshold"),]
    for name, lung_seg, label in runs:
        store_dir = tmp / f"store-{name[:-4]}-{lung_seg}"
        cohort = resolve_cohort("copdgene", [f"manifest={tmp / name}", f"store={store_dir}"])
        start = time.perf_counter()
        store = preprocess_cohort(cohort, workers=1, lung_seg=lung_seg)
        wall = time.perf_counter() - start
        print(f"  {label}: {wall:.1f} s incl. store setup; per stage (s): {_stage_table(store.index)}")


def bench_demo(tmp: Path, n: int, workers: int, downsample: list[float]) -> None:
    manifest = generate_cohort(tmp / "demo", n=n, seed=0, spacing_mm=2.0, workers=workers)
    for ds in downsample:
        cohort = resolve_cohort("demo", [f"manifest={manifest}", f"store={tmp / f'store-demo-{ds:g}'}"])
        cohort = dataclasses.replace(cohort, synthetic=None,
                                     registration=dataclasses.replace(cohort.registration, downsample_mm=ds))
        start = time.perf_counter()
        store = preprocess_cohort(cohort, workers=workers)
        wall = time.perf_counter() - start
        index = store.index
        print(f"  demo 2 mm, {n} subjects, {workers} workers, registration at {ds:g} mm: {wall:.1f} s = "
              f"{n / wall:.2f} subjects/s ({len(store.sids)} ok); per subject (s): {_stage_table(index)}; "
              f"Dice {index['dice'].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-demo", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--downsample", default="4,6", help="registration spacings (mm) for the demo runs")
    parser.add_argument("--skip-1mm", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as folder:
        tmp = Path(folder)
        if not args.skip_1mm:
            bench_1mm(tmp)
        if not args.skip_demo:
            bench_demo(tmp, args.n_demo, args.workers, [float(x) for x in args.downsample.split(",")])


if __name__ == "__main__":
    main()
