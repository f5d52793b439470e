"""What ``copd-ifm preprocess`` does with the inputs a real cohort brings (issue #21): a table, one run.

Builds a hand-made chest CT (4 mm, ``copd_ifm.ct.handmade``) in the ways real exports break it — DICOM
series written with pydicom (two kernels, empty UIDs, gaps, duplicates, gantry tilt, MR, two slices, RLE,
an undecodable transfer syntax), scans cut at the apices or by a small field of view, an abdominal scan
with stomach gas — plus the real Siemens series in ``tests/data/totalseg_example_ct_dicom``, preprocesses
them as one manifest and prints ``sid | status | reason code | reason`` as a Markdown table.

Usage: ``python benchmarks/real_inputs.py``
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]                                   # this checkout (and its test helpers)

from tests.ct.dicom_series import series_from_image, write_series  # noqa: E402  (test helpers: pydicom writers)

from copd_ifm.cohort.config import CohortConfig, RegistrationConfig  # noqa: E402
from copd_ifm.ct.handmade import handmade_ct  # noqa: E402
from copd_ifm.ct.preprocess import preprocess_cohort  # noqa: E402

SPACING = 4.0


def _positions(ct: sitk.Image) -> list[tuple[float, ...]]:
    return [ct.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(ct.GetDepth())]


def build(root: Path) -> list[tuple[str, str, str, str]]:
    """Write every case under ``root``; manifest rows ``(sid, image, series_uid, what it is)``."""
    ct, _ = handmade_ct(SPACING, seed=0)
    stored = (sitk.GetArrayFromImage(ct).astype(np.int32) + 1024).astype(np.uint16)
    rows = []
    series_from_image(ct, root / "good", series_uid="1.2.5.1")
    rows.append(("good", "good", "", "uniform DICOM series, one kernel"))
    series_from_image(ct, root / "kernels", series_uid="1.2.5.2", kernel="B30f", prefix="a")
    sharp = sitk.Cast(sitk.Cast(ct, sitk.sitkInt32) + 200, sitk.sitkInt16)
    series_from_image(sharp, root / "kernels", series_uid="1.2.5.3", kernel="B70f", prefix="b")
    rows.append(("two_kernels", "kernels", "", "soft and sharp (+200 HU) series, same slice count"))
    rows.append(("two_kernels_named", "kernels", "1.2.5.2", "same folder, manifest series_uid names the soft one"))
    series_from_image(ct, root / "nouid", series_uid="", series_number=2, prefix="a")
    series_from_image(ct, root / "nouid", series_uid="", series_number=3, prefix="b", kernel="B70f")
    rows.append(("empty_uids", "nouid", "", "two series, SeriesInstanceUID empty (Siemens export)"))
    rows.append(("empty_uids_named", "nouid", "noUID:2:1:B30f", "same, series_uid names one"))
    gap = series_from_image(ct, root / "gap")
    for path in gap[40:48]:                      # files are named in reverse slice order
        path.unlink()
    rows.append(("missing_30mm", "gap", "", "8 slices (32 mm) missing in the middle"))
    z = _positions(ct)
    write_series(root / "dup", stored[:20], [z[10]] * 9 + z[20:31])
    rows.append(("duplicates", "dup", "", "9 files at one position"))
    tilt = np.tan(np.radians(15.0)) * SPACING
    write_series(root / "tilt", stored, [(p[0], p[1] + k * tilt, p[2]) for k, p in enumerate(z)],
                 orientation=(1, 0, 0, 0, -1, 0), pixel_mm=(SPACING, SPACING), tilt=15.0)
    rows.append(("gantry_tilt", "tilt", "", "15 deg tilt: positions sheared off the normal"))
    series_from_image(ct, root / "mr", modality="MR")
    rows.append(("mr", "mr", "", "an MR series"))
    series_from_image(ct[:, :, 40:42], root / "two_slices")
    rows.append(("two_slices", "two_slices", "", "two chest slices"))
    series_from_image(ct, root / "rle", compress=RLELossless)
    rows.append(("rle", "rle", "", "the good series, RLE lossless"))
    for path in series_from_image(ct, root / "mpeg"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = encapsulate([b"\xff\x0a" + b"\0" * 40])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    rows.append(("undecodable", "mpeg", "", "pixels in MPEG-2 (no decoder)"))
    sitk.WriteImage(ct, str(root / "whole.nii.gz"))
    rows.append(("nifti", "whole.nii.gz", "", "the same CT as NIfTI"))
    sitk.WriteImage(ct[:, :, :58], str(root / "apex_cut.nii.gz"))          # lungs reach z index 71: 56 mm cut
    rows.append(("apex_cut_56mm", "apex_cut.nii.gz", "", "scan range ends 56 mm below the lung apices"))
    sitk.WriteImage(ct[28:, :, :], str(root / "small_fov.nii.gz"))
    rows.append(("small_fov", "small_fov.nii.gz", "", "reconstruction field cuts the right lung (threshold mask)"))
    values = sitk.GetArrayFromImage(ct).astype(np.float32)[:10]
    body = values[0] > -400
    yy, xx = np.mgrid[: values.shape[1], : values.shape[2]]
    ys, xs = np.nonzero(body)
    gas = ((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2 < 12 ** 2) & body
    values[:4][:, gas] = -1000.0
    abdomen = sitk.GetImageFromArray(values)
    abdomen.CopyInformation(ct[:, :, :10])
    sitk.WriteImage(abdomen, str(root / "abdomen.nii.gz"))
    rows.append(("abdomen", "abdomen.nii.gz", "", "lung bases over an abdomen with a 48 mm gas bubble"))
    rows.append(("real_siemens", str(ROOT / "tests" / "data" / "totalseg_example_ct_dicom"), "",
                 "real Siemens JPEG 2000 series, 20 slices, empty UID (upper abdomen)"))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="real-inputs-") as folder:
        root = Path(folder)
        rows = build(root)
        manifest = pd.DataFrame([r[:3] for r in rows], columns=["sid", "image", "series_uid"])
        manifest.to_csv(root / "manifest.csv", index=False)
        cohort = CohortConfig(name="real-inputs", manifest=str(root / "manifest.csv"), spacing_mm=SPACING,
                              patch_size=8, store=str(root / "store"),
                              registration=RegistrationConfig(downsample_mm=8.0, shrink_factors=[2, 1],
                                                              smoothing_sigmas_mm=[4.0, 0.0]))
        store = preprocess_cohort(cohort, workers=1, qc_samples=0)
        index = store.index.set_index("sid")
        print("| case | input | status | code | what the tool says / records |")
        print("| --- | --- | --- | --- | --- |")
        for sid, _, _, what in rows:
            row = index.loc[sid]
            text = (f"ok: series {row['series_uid'] or '-'} kernel {row['series_kernel'] or '-'}, "
                    f"{row['laa950_pct']:.2f} % LAA-950, {row['lung_volume_l']:.2f} L"
                    if row["status"] == "ok" else row["error"].replace(str(root), "…").replace(str(ROOT), "…"))
            print(f"| {sid} | {what} | {row['status']} | {row['reason_code'] or ''} | {text.replace('|', '/')} |")


if __name__ == "__main__":
    main()
