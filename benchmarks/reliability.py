"""Cost of the store's safety checks on a 1 mm chest CT: input identity, re-run skip checks, multi-member gzip.

For one synthetic subject at 1 mm (the generator's SYN0001, padded with air to
a scanner field of view of 384 x 384 x 320 voxels), measured in one run:

* preprocessing the subject (``copdgene`` settings, 1 process), of which the
  input identity (stat + SHA-1 of image and mask) is a part;
* the skip check of a done subject on a re-run: unchanged files (stat only)
  and touched files (same bytes, new mtime: the content is hashed again);
* reading the CT as a single-member ``.nii.gz`` (completeness from the gzip
  trailer) and as a two-member one (bgzip style: streamed decompression).

Usage: ``python benchmarks/reliability.py [--repeats 3]``
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import pandas as pd
import SimpleITK as sitk

from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.cohort.synthetic import generate_cohort
from copd_ifm.ct import store as st
from copd_ifm.ct.io import read_image
from copd_ifm.ct.preprocess import preprocess_cohort

FOV_1MM = (384, 384, 320)


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _pad(image: sitk.Image, value: float) -> sitk.Image:
    extra = [max(0, s - n) for s, n in zip(FOV_1MM, image.GetSize())]
    return sitk.ConstantPad(image, [e // 2 for e in extra], [e - e // 2 for e in extra], value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        tmp = Path(folder)
        manifest = generate_cohort(tmp / "synth", n=1, seed=0, spacing_mm=1.0, workers=1)
        row = pd.read_csv(manifest, dtype=str).iloc[0]
        ct = _pad(sitk.ReadImage(str(manifest.parent / row["image"])), -1000)
        image, mask = tmp / "ct.nii.gz", tmp / "mask.nii.gz"
        sitk.WriteImage(ct, str(image))
        sitk.WriteImage(_pad(sitk.ReadImage(str(manifest.parent / row["lung_mask"])), 0), str(mask))
        pd.DataFrame([{"sid": "S1", "image": image.name, "lung_mask": mask.name}]).to_csv(tmp / "m.csv", index=False)
        print(f"CT {ct.GetSize()} at 1 mm: {image.stat().st_size / 2**20:.1f} MiB compressed")

        cohort = resolve_cohort("copdgene", [f"manifest={tmp / 'm.csv'}", f"store={tmp / 'store'}"])
        start = time.perf_counter()
        store = preprocess_cohort(cohort, workers=1)
        subject = float(store.index["seconds"].iloc[0])
        print(f"preprocess one subject: {time.perf_counter() - start:.2f} s in all, {subject:.2f} s for the subject")
        identity = _best(lambda: (st.input_identity(image), st.input_identity(mask)), args.repeats)
        print(f"input identity (stat + SHA-1 of image and mask): {identity:.3f} s = "
              f"{100 * identity / subject:.1f} % of the subject's time")

        record = st.read_record(store.path, "S1")
        settings = record["settings_hash"]
        unchanged = _best(lambda: st.is_done(store.path, "S1", image, mask, settings), args.repeats)
        os.utime(image)
        os.utime(mask)
        touched = _best(lambda: st.is_done(store.path, "S1", image, mask, settings), args.repeats)
        assert st.is_done(store.path, "S1", image, mask, settings) is not None
        print(f"skip check of a done subject: unchanged files {unchanged * 1e3:.1f} ms, touched files "
              f"{touched * 1e3:.1f} ms (re-hash) = {touched / unchanged:.1f}x")

        raw = gzip.decompress(image.read_bytes())
        multi = tmp / "multi.nii.gz"
        multi.write_bytes(gzip.compress(raw[: len(raw) // 2], 6) + gzip.compress(raw[len(raw) // 2:], 6))
        single_s = _best(lambda: read_image(image), args.repeats)
        multi_s = _best(lambda: read_image(multi), args.repeats)
        print(f"read_image: single-member {single_s:.2f} s, two-member {multi_s:.2f} s "
              f"(+{multi_s - single_s:.2f} s streamed completeness check = {multi_s / single_s:.2f}x)")


if __name__ == "__main__":
    main()
