"""``copd-ifm preprocess`` end to end on hand-made CTs: store layout, planted failures, patches, resume, shards."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml

from copd_ifm.cli import main
from copd_ifm.cohort.config import CohortConfig, RegistrationConfig
from copd_ifm.ct.densitometry import densitometry
from copd_ifm.ct.handmade import handmade_ct
from copd_ifm.ct.landmarks import atlas_landmarks
from copd_ifm.ct.preprocess import preprocess_cohort
from copd_ifm.ct.store import INDEX_COLUMNS, PatchStore, file_sha1, record_path, to_network
from copd_ifm.errors import UserError
from tests.ct.test_io import write_dicom_series

SPACING, PATCH = 4.0, 8
FAST = {"downsample_mm": 8.0, "shrink_factors": [2, 1], "smoothing_sigmas_mm": [4.0, 0.0]}
OK = ["plain", "masked", "dicom", "turned"]
FAILS = {"missing": "image not found", "truncated": "cannot read truncated.nii.gz: file is truncated",
         "flat": "2-D", "mismatch": "geometry mismatch: size", "tiny": "implausible lung mask",
         "raw": "not in HU", "flipped": "registration diverged", "noimage": "no image path",
         "allair": "implausible lung mean -1000 HU"}


def _affine(matrix, shift) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter((0.0, -150.0, -1000.0))
    affine.SetMatrix(tuple(float(v) for v in matrix))
    affine.SetTranslation(shift)
    return affine


def _write(image: sitk.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return str(path.relative_to(path.parent.parent))


def _cohort(manifest: Path, store: Path, **kw) -> CohortConfig:
    return CohortConfig(name="t", manifest=str(manifest), spacing_mm=SPACING, patch_size=PATCH, store=str(store),
                        registration=RegistrationConfig(**FAST), **kw)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    """A manifest of four good subjects in four storage variants and one subject per failure kind."""
    root = tmp_path_factory.mktemp("cohort")
    plain, _ = handmade_ct(SPACING, seed=0)
    moved = _affine((1.06, 0, 0, 0, 0.95, 0, 0, 0, 1.04), (8.0, -5.0, 6.0))
    ct, mask = handmade_ct(SPACING, moved, seed=1)
    labels = sitk.Cast(mask, sitk.sitkUInt8) * 50                    # lung labels as the atlas writes them
    flipped_ct, flipped_mask = handmade_ct(SPACING, _affine((1, 0, 0, 0, 1, 0, 0, 0, -1), (0, 0, 0)), seed=2)
    tiny = sitk.Image(mask)
    tiny_array = np.zeros(sitk.GetArrayViewFromImage(mask).shape, np.uint8)
    tiny_array[30:33, 40:43, 40:43] = 1                               # 27 voxels of 64 mm³: 0.0017 L
    tiny = sitk.GetImageFromArray(tiny_array)
    tiny.CopyInformation(mask)
    rows = [
        ("plain", _write(plain, root / "images" / "plain.nii.gz"), ""),
        ("masked", _write(ct, root / "images" / "masked.mha"), _write(labels, root / "masks" / "masked.nii.gz")),
        ("dicom", "images/dicom", "masks/masked.nii.gz"),
        ("turned", _write(sitk.DICOMOrient(plain, "LPS"), root / "images" / "turned.nrrd"), ""),
        ("missing", "images/missing.nii.gz", ""),
        ("truncated", "images/truncated.nii.gz", ""),
        ("flat", _write(plain[:, :, 40], root / "images" / "flat.nii.gz"), ""),
        ("mismatch", "images/masked.mha", _write(labels[:-2, :, :], root / "masks" / "small.nii.gz")),
        ("tiny", "images/masked.mha", _write(tiny, root / "masks" / "tiny.nii.gz")),
        ("raw", _write(sitk.Cast(ct, sitk.sitkInt32) + 1024, root / "images" / "raw.nii.gz"), ""),
        ("flipped", _write(flipped_ct, root / "images" / "flipped.nii.gz"),
         _write(flipped_mask, root / "masks" / "flipped.nii.gz")),
        ("noimage", "", ""),
        ("allair", _write(ct * 0 - 1000, root / "images" / "allair.mha"), "masks/masked.nii.gz"),
    ]
    write_dicom_series(ct, root / "images" / "dicom")
    whole = (root / "images" / "plain.nii.gz").read_bytes()
    (root / "images" / "truncated.nii.gz").write_bytes(whole[: len(whole) * 2 // 3])
    pd.DataFrame(rows, columns=["sid", "image", "lung_mask"]).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def store(cohort_dir, tmp_path_factory) -> PatchStore:
    out = tmp_path_factory.mktemp("store") / "store"
    return preprocess_cohort(_cohort(cohort_dir / "manifest.csv", out), workers=2, qc_samples=2)


def test_store_layout_and_reader(store):
    assert store.sids == sorted(OK)
    assert store.patch_size == PATCH and store.n_landmarks == 747
    np.testing.assert_array_equal(store.landmarks, atlas_landmarks(SPACING, PATCH, 26.0, 0.1))
    assert store.landmark_coords.dtype == np.float32 and store.landmark_coords.shape == (747, 3)
    assert store.graph.num_nodes == 747 and store.graph.edge_index.shape[0] == 2
    assert set(INDEX_COLUMNS) <= set(store.index.columns) and len(store.index) == len(OK) + len(FAILS)
    resolved = yaml.safe_load((store.path / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["patch_size"] == PATCH and resolved["registration"]["downsample_mm"] == 8.0
    patches = store.patches("masked")
    assert isinstance(patches, np.memmap) and patches.dtype == np.int16 and patches.shape == (747, 8, 8, 8)
    assert patches.min() >= -1024 and patches.max() <= 240
    ok = store.index.set_index("sid").loc[OK]
    assert (ok["n_patches"] == 747).all() and (ok["dice"] > 0.9).all()
    for sid in OK:
        assert ok.loc[sid, "sha1"] == file_sha1(store.path / "patches" / f"{sid}.npy")
    for sid in ("plain", "masked"):
        with PIL.Image.open(store.path / "qc" / f"{sid}.png") as preview:
            assert preview.size[0] > 500
    assert not (store.path / "qc" / "dicom.png").exists()           # only the first qc_samples rows


def test_every_planted_failure_has_a_one_line_reason(store):
    failures = pd.read_csv(store.path / "failures.csv", dtype=str)
    assert dict(zip(failures["sid"], failures["reason"])).keys() == FAILS.keys()
    for sid, reason in zip(failures["sid"], failures["reason"]):
        assert FAILS[sid] in reason and "\n" not in reason, (sid, reason)
    pd.testing.assert_frame_equal(store.failures, failures.reset_index(drop=True))


def test_patches_read_back_equal_ct_at_the_mapped_corners(store, cohort_dir):
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / "images" / "masked.mha")))   # already on the grid
    centers = store.centers("masked")
    patches = store.patches("masked")
    pad = 4 * PATCH
    padded = np.pad(ct, pad, constant_values=-1024)
    for l, (i, j, k) in enumerate(np.floor(centers + 0.5).astype(int)):  # noqa: E741 (landmark index)
        cube = padded[k + pad:k + pad + PATCH, j + pad:j + pad + PATCH, i + pad:i + pad + PATCH]
        expected = np.clip(cube, -1024, 240)
        np.testing.assert_array_equal(patches[l], expected)


def test_identity_subject_keeps_atlas_corners_and_storage_does_not_matter(store):
    assert np.abs(store.centers("plain") - store.landmarks).mean() < 0.25
    np.testing.assert_array_equal(store.patches("turned"), store.patches("plain"))     # stored as LPS
    np.testing.assert_allclose(store.centers("turned"), store.centers("plain"), atol=1e-3)
    np.testing.assert_array_equal(store.patches("dicom"), store.patches("masked"))     # same CT as a DICOM series


def test_densitometry_matches_recomputation(store, cohort_dir):
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / "images" / "masked.mha")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / "masks" / "masked.nii.gz"))) > 0
    expected = densitometry(ct, mask, SPACING ** 3)
    row = store.densitometry().set_index("sid").loc["masked"]
    assert list(store.densitometry().columns) == ["sid", "laa950_pct", "perc15_hu", "lung_volume_l"]
    for key in ("laa950_pct", "perc15_hu", "lung_volume_l"):
        assert row[key] == pytest.approx(expected[key], rel=1e-6)
    assert store.index.set_index("sid").loc["masked", "lung_mean_hu"] == pytest.approx(ct[mask].mean(), rel=1e-6)


def test_densitometry_is_measured_on_the_native_grid(cohort_dir, tmp_path):
    """An anisotropic image (3 × 3 × 5 mm) with integer HU at and just below −950: the record is the native count."""
    image = sitk.ReadImage(str(cohort_dir / "images" / "masked.mha"))
    labels = sitk.ReadImage(str(cohort_dir / "masks" / "masked.nii.gz"))
    hu = sitk.GetArrayFromImage(image)
    lung = sitk.GetArrayFromImage(labels) > 0
    idx = np.flatnonzero(lung)
    rng = np.random.default_rng(0)
    picked = rng.permutation(idx)[: len(idx) // 5]
    hu.flat[picked[: len(picked) // 2]] = -950                        # on the threshold: not counted
    hu.flat[picked[len(picked) // 2:]] = -951
    native = sitk.GetImageFromArray(hu)
    native.CopyInformation(image)
    for img in (native, labels):
        img.SetSpacing((3.0, 3.0, 5.0))
    rows = [("aniso", _write(native, tmp_path / "images" / "aniso.nii.gz"),
             _write(labels, tmp_path / "masks" / "aniso.nii.gz"))]
    pd.DataFrame(rows, columns=["sid", "image", "lung_mask"]).to_csv(tmp_path / "manifest.csv", index=False)
    store = preprocess_cohort(_cohort(tmp_path / "manifest.csv", tmp_path / "store"), workers=1)
    row = store.densitometry().set_index("sid").loc["aniso"]
    lung_hu = hu[lung]
    assert row["laa950_pct"] == pytest.approx(100 * np.count_nonzero(lung_hu < -950) / lung_hu.size, rel=1e-9)
    assert row["laa950_pct"] == pytest.approx(100 * (len(picked) - len(picked) // 2) / lung_hu.size, abs=0.05)
    assert row["perc15_hu"] == pytest.approx(np.percentile(lung_hu, 15), rel=1e-9)
    assert row["lung_volume_l"] == pytest.approx(lung_hu.size * 45.0 / 1e6, rel=1e-9)


def test_cli_rerun_skips_done_subjects_and_exits_nonzero_for_failures(store, cohort_dir, tmp_path, capsys):
    config = tmp_path / "cohort.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "manifest": str(cohort_dir / "manifest.csv"),
                                      "spacing_mm": SPACING, "patch_size": PATCH, "registration": FAST}), encoding="utf-8")
    before = {sid: record_path(store.path, sid).stat().st_mtime_ns for sid in OK + list(FAILS)}
    code = main(["preprocess", "--cohort", str(config), "--out", str(store.path), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "4 subjects ok, 9 failed" in out and "failed missing: image not found" in out
    after = {sid: record_path(store.path, sid).stat().st_mtime_ns for sid in before}
    assert all(after[sid] == before[sid] for sid in OK)               # done: skipped
    assert all(after[sid] > before[sid] for sid in FAILS)             # failed: tried again


def test_resume_redoes_a_corrupted_patch_file_and_a_fixed_subject(cohort_dir, tmp_path):
    manifest = tmp_path / "manifest.csv"
    table = pd.read_csv(cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    rows = table[table["sid"].isin(["plain", "missing"])].copy()
    rows["image"] = [str(cohort_dir / p) for p in rows["image"]]
    rows.to_csv(manifest, index=False)
    cohort = _cohort(manifest, tmp_path / "store")
    first = preprocess_cohort(cohort, workers=1)
    patch_file = first.path / "patches" / "plain.npy"
    original = np.load(patch_file)
    data = bytearray(patch_file.read_bytes())
    data[-100:] = bytes(100)                                          # a half-written or damaged file
    patch_file.write_bytes(bytes(data))
    shutil.copy(cohort_dir / "images" / "plain.nii.gz", cohort_dir / "images" / "missing.nii.gz")
    try:
        second = preprocess_cohort(cohort, workers=1)
    finally:
        (cohort_dir / "images" / "missing.nii.gz").unlink()
    np.testing.assert_array_equal(np.load(patch_file), original)
    assert second.sids == ["missing", "plain"] and second.failures.empty
    assert second.index.set_index("sid").loc["plain", "sha1"] == file_sha1(patch_file)


def test_concurrent_shards_fill_one_store(cohort_dir, tmp_path):
    manifest = tmp_path / "manifest.csv"
    table = pd.read_csv(cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    rows = table[table["sid"].isin(["plain", "masked", "turned", "missing"])].copy()
    rows["image"] = [str(cohort_dir / p) for p in rows["image"]]
    rows["lung_mask"] = [str(cohort_dir / p) if p else "" for p in rows["lung_mask"]]
    rows.to_csv(manifest, index=False)
    cohort = _cohort(manifest, tmp_path / "store")
    errors = []

    def shard(k: int) -> None:
        try:
            preprocess_cohort(cohort, workers=1, shard=(k, 2))
        except Exception as exc:        # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = PatchStore(tmp_path / "store")
    assert final.sids == ["masked", "plain", "turned"] and list(final.failures["sid"]) == ["missing"]
    assert list(final.index["sid"]) == list(rows["sid"])              # manifest order


def test_store_with_other_settings_is_refused(store, cohort_dir):
    other = _cohort(cohort_dir / "manifest.csv", store.path)
    other.patch_size = 6
    with pytest.raises(UserError, match="patch_size differ"):
        preprocess_cohort(other, workers=1)


def test_missing_or_empty_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="copd-ifm preprocess --cohort"):
        PatchStore(tmp_path / "nowhere")


def test_to_network_scaling():
    hu = np.array([-1024, -392, 240], dtype=np.int16)
    np.testing.assert_allclose(to_network(hu), [-1.0, 0.0, 1.0], atol=1e-6)
    assert to_network(hu).dtype == np.float32
    tensor = PatchStore.to_network(torch.from_numpy(hu))
    assert tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.tensor([-1.0, 0.0, 1.0]))


def test_generated_cohort_end_to_end(tmp_path, monkeypatch):
    from copd_ifm.cohort.synthetic import generate_cohort

    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    manifest = generate_cohort(tmp_path / "synth", n=3, seed=0, spacing_mm=4.0, workers=1)
    result = preprocess_cohort(_cohort(manifest, tmp_path / "store"), workers=1)
    assert len(result.sids) == 3 and result.failures.empty
    index = result.index.set_index("sid")
    assert (index["dice"] > 0.9).all() and (index["mask_source"] == "manifest").all()
    assert result.patches(result.sids[0]).shape == (747, PATCH, PATCH, PATCH)
