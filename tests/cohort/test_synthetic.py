"""Synthetic COPD CT cohort: layout, headers, phenotypes driven by the images, determinism, bad input.

The 48-subject cohort of the issue's densitometry test is generated once at 4 mm
(same generator as the 2 mm demo, 8× fewer voxels) and shared by the tests.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from copd_ifm.cli import main
from copd_ifm.cohort import phantom, phenotypes, synthetic
from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.config import CohortConfig, SyntheticSpec
from copd_ifm.cohort.synthetic import ensure_cohort, generate_cohort
from copd_ifm.errors import UserError

N, SPACING = 48, 4.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("synth") / "cohort", n=N, seed=0, spacing_mm=SPACING,
                           workers=2).parent


@pytest.fixture(scope="module")
def table(cohort: Path) -> pd.DataFrame:
    """Manifest joined with latents, plus %LAA-950, mean HU and zone %LAA read back from the files."""
    manifest = pd.read_csv(cohort / "manifest.csv")
    rows = []
    for r in manifest.itertuples():
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / r.image)))
        lung = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / r.lung_mask))) > 0
        z = np.nonzero(lung)[0]
        upper = lung & (np.arange(lung.shape[0]) >= np.percentile(z, 67))[:, None, None]
        lower = lung & (np.arange(lung.shape[0]) <= np.percentile(z, 33))[:, None, None]
        rows.append({"sid": r.sid, "laa": 100 * np.mean(ct[lung] < -950), "mean_hu": ct[lung].mean(),
                     "laa_upper": 100 * np.mean(ct[upper] < -950), "laa_lower": 100 * np.mean(ct[lower] < -950)})
    return manifest.merge(pd.read_csv(cohort / "latents.csv"), on="sid").merge(pd.DataFrame(rows), on="sid")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- layout and formats -----------------------------------------------------------------------


@pytest.mark.slow
def test_layout_and_columns(cohort: Path, table: pd.DataFrame) -> None:
    manifest = pd.read_csv(cohort / "manifest.csv")
    assert list(manifest.columns) == ["sid", "image", "lung_mask", "FEV1pp_utah", "FEV1_FVC_utah", "finalGold",
                                      "Emph_Severity", "Emph_Paraseptal", "MMRCDyspneaScor"]
    assert len(manifest) == N and manifest.sid.is_unique
    assert all((cohort / p).is_file() for p in [*manifest.image, *manifest.lung_mask])
    latents = pd.read_csv(cohort / "latents.csv")
    assert {"emphysema", "cle_share", "airway", "site", "body_size", "lung_volume_l"} <= set(latents.columns)
    assert list(latents.sid) == list(manifest.sid)
    with Image.open(cohort / "preview.png") as png:
        assert png.format == "PNG" and png.size[0] > 500 and png.size[1] > 500
    params = json.loads((cohort / "synth.json").read_text(encoding="utf-8"))
    assert params["complete"] and (params["n"], params["seed"], params["spacing_mm"]) == (N, 0, SPACING)
    assert not (cohort / ".partial").exists()


@pytest.mark.slow
def test_headers_readable_by_simpleitk_nibabel_and_monai(cohort: Path) -> None:
    from monai.transforms import LoadImage

    atlas = load_atlas_mask(SPACING)
    image = sitk.ReadImage(str(cohort / "images" / "SYN0001.nii.gz"))
    mask = sitk.ReadImage(str(cohort / "masks" / "SYN0001.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSpacing() == pytest.approx((SPACING,) * 3)
    assert image.GetDirection() == pytest.approx(atlas.GetDirection())
    assert mask.GetOrigin() == pytest.approx(image.GetOrigin()) and mask.GetSize() == image.GetSize()
    ct = sitk.GetArrayFromImage(image)
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) == {0, 50, 100}
    # Right lung (50) on the patient's right: smaller LPS x than the left lung (100).
    xs = {lab: np.mean([image.TransformIndexToPhysicalPoint((int(i), 0, 0))[0]
                        for i in np.nonzero(labels == lab)[2][::50]]) for lab in (50, 100)}
    assert xs[50] < xs[100]
    # nibabel: same voxels (x, y, z order) and RAS affine = LPS geometry with x, y negated.
    nii = nib.load(str(cohort / "images" / "SYN0001.nii.gz"))
    assert np.array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), ct)
    corner = nii.affine @ np.array([3, 5, 7, 1.0])
    lps = image.TransformIndexToPhysicalPoint((3, 5, 7))
    assert corner[:3] == pytest.approx([-lps[0], -lps[1], lps[2]], abs=1e-3)
    loaded = LoadImage(image_only=True)(str(cohort / "images" / "SYN0001.nii.gz"))
    assert tuple(loaded.shape) == image.GetSize()
    # Air outside the body, soft tissue and bone present.
    assert ct[0, 0, 0] == pytest.approx(-1000, abs=30)
    assert np.any((ct > 0) & (ct < 80)) and ct.max() > 250


# --- phenotypes driven by the images ----------------------------------------------------------


@pytest.mark.slow
def test_laa950_from_images_tracks_fev1pp(table: pd.DataFrame) -> None:
    rho = spearmanr(table.laa, table.FEV1pp_utah).statistic
    assert rho <= -0.4, rho
    assert np.allclose(table.laa, table.laa950_pct, atol=1e-3)   # latents.csv reports what the files hold


@pytest.mark.slow
def test_mild_subjects_have_normal_lung_density(table: pd.DataFrame) -> None:
    mild = table[table.emphysema < 0.02]
    assert len(mild) >= 5
    assert mild.mean_hu.between(-900, -800).all(), mild.mean_hu.tolist()


@pytest.mark.slow
def test_emphysema_is_upper_zone_predominant(table: pd.DataFrame) -> None:
    severe = table[table.cle_fraction > 0.1]
    assert len(severe) >= 5
    assert (severe.laa_upper > severe.laa_lower).mean() >= 0.8


@pytest.mark.slow
def test_scores_follow_measured_amounts_and_gold_rules(table: pd.DataFrame) -> None:
    for r in table.itertuples():
        ratio, fev1 = r.FEV1_FVC_utah, r.FEV1pp_utah
        gold = (0 if fev1 >= 80 else -1) if ratio >= 0.7 else (1 if fev1 >= 80 else 2 if fev1 >= 50
                                                               else 3 if fev1 >= 30 else 4)
        assert r.finalGold == gold
        assert r.Emph_Severity == sum(r.cle_fraction >= b for b in phenotypes.CLE_SCORE_BOUNDS)
        assert r.Emph_Paraseptal == sum(r.pse_fraction >= b for b in phenotypes.PSE_SCORE_BOUNDS)
    assert table.FEV1pp_utah.between(12, 130).all() and table.FEV1_FVC_utah.between(0.22, 0.92).all()
    assert table.MMRCDyspneaScor.between(0, 4).all()
    # A spread of severities: a fair share of GOLD 0 and some GOLD 3-4; several CLE levels.
    assert (table.finalGold == 0).mean() >= 0.2 and (table.finalGold >= 3).sum() >= 3
    assert table.Emph_Severity.nunique() >= 5
    # CLE score from what was drawn: more CLE, more low-attenuation voxels in the image.
    assert spearmanr(table.Emph_Severity, table.laa).statistic > 0.7


@pytest.mark.slow
def test_rendered_amounts_match_latents(table: pd.DataFrame) -> None:
    cle_target = table.emphysema * table.cle_share
    assert np.allclose(table.cle_fraction, cle_target, atol=0.01)
    pse_target = table.emphysema * (1 - table.cle_share)
    assert np.all(table.pse_fraction >= pse_target - 1e-4)
    assert np.all(table.pse_fraction <= pse_target + 0.02)


# --- determinism, reuse, resume ---------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_workers(cohort: Path, tmp_path: Path) -> None:
    small = generate_cohort(tmp_path / "small", n=3, seed=0, spacing_mm=SPACING, workers=1).parent
    for sid in ("SYN0001", "SYN0002", "SYN0003"):
        for kind in ("images", "masks"):
            assert _digest(small / kind / f"{sid}.nii.gz") == _digest(cohort / kind / f"{sid}.nii.gz")
    big = pd.read_csv(cohort / "manifest.csv").head(3)
    pd.testing.assert_frame_equal(pd.read_csv(small / "manifest.csv"), big)
    other = generate_cohort(tmp_path / "other", n=1, seed=1, spacing_mm=SPACING, workers=1).parent
    assert _digest(other / "images" / "SYN0001.nii.gz") != _digest(small / "images" / "SYN0001.nii.gz")


@pytest.mark.slow
def test_complete_cohort_is_reused_and_a_different_one_refused(cohort: Path) -> None:
    before = (cohort / "images" / "SYN0001.nii.gz").stat().st_mtime_ns
    assert generate_cohort(cohort, n=N, seed=0, spacing_mm=SPACING) == cohort / "manifest.csv"
    assert (cohort / "images" / "SYN0001.nii.gz").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="different synthetic cohort"):
        generate_cohort(cohort, n=N - 1, seed=0, spacing_mm=SPACING)


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = generate_cohort(tmp_path / "fresh", n=2, seed=3, spacing_mm=8.0, workers=1).parent

    def crash(*args: object) -> None:
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "_write_tables", crash)
        with pytest.raises(RuntimeError):
            generate_cohort(tmp_path / "resumed", n=2, seed=3, spacing_mm=8.0, workers=1)
    assert not (tmp_path / "resumed" / "manifest.csv").exists()

    def no_rendering(task: object) -> None:
        raise AssertionError("subject generated twice")

    monkeypatch.setattr(synthetic, "make_subject", no_rendering)
    resumed = generate_cohort(tmp_path / "resumed", n=2, seed=3, spacing_mm=8.0, workers=1).parent
    for name in ("manifest.csv", "latents.csv", "preview.png", "images/SYN0002.nii.gz"):
        assert _digest(resumed / name) == _digest(fresh / name)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "at least one subject"),
    ({"spacing_mm": 0.2}, "between 0.5 and 8"),
    ({"spacing_mm": 12.0}, "between 0.5 and 8"),
    ({"spacing_mm": -2.0}, "between 0.5 and 8"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate_cohort(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_unwritable_or_foreign_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="cannot write"):
        generate_cohort(tmp_path / "file" / "c", n=1, spacing_mm=8.0)
    with pytest.raises(UserError, match="is a file"):
        generate_cohort(tmp_path / "file", n=1, spacing_mm=8.0)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="holds no synthetic cohort"):
        generate_cohort(tmp_path / "foreign", n=1, spacing_mm=8.0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n" in err
    assert main(["synth", "--out", str(tmp_path / "c"), "--spacing", "9"]) == 2
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "1", "--spacing", "8", "--workers", "1"]) == 0
    assert "manifest.csv" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "2", "--spacing", "8"]) == 2
    assert "different synthetic cohort" in capsys.readouterr().err


def test_ensure_cohort(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    demo = CohortConfig(name="demo", manifest=str(tmp_path / "demo" / "manifest.csv"), spacing_mm=8.0,
                        synthetic=SyntheticSpec(n=1, seed=0))
    with caplog.at_level(logging.INFO, logger="copd_ifm"):
        assert ensure_cohort(demo) == tmp_path / "demo" / "manifest.csv"
    assert any("first use" in r.getMessage() for r in caplog.records)
    stamp = (tmp_path / "demo" / "manifest.csv").stat().st_mtime_ns
    assert ensure_cohort(demo) == tmp_path / "demo" / "manifest.csv"
    assert (tmp_path / "demo" / "manifest.csv").stat().st_mtime_ns == stamp
    real = CohortConfig(name="copdgene", manifest=str(tmp_path / "missing" / "manifest.csv"))
    with pytest.raises(UserError, match="--set cohort.manifest="):
        ensure_cohort(real)


# --- building blocks against closed forms ------------------------------------------------------


def test_tube_volumes_match_cylinders() -> None:
    h, length = 2.0, 60.0
    shape = (40, 40, 50)
    segment = lambda r: np.array([[40.0, 40.0, 20.0, 40.0, 40.0, 20.0 + length, r]])  # noqa: E731
    for r in (0.6, 3.0):                                       # thin (deposited) and thick (painted)
        tissue, air = phantom.draw_tubes(shape, h, segment(r), np.zeros(1))
        assert tissue.sum() * h ** 3 == pytest.approx(np.pi * r ** 2 * length, rel=0.12)
        assert air.sum() == 0
    tissue, air = phantom.draw_tubes(shape, h, segment(3.0), np.array([1.5]))
    assert air.sum() * h ** 3 == pytest.approx(np.pi * 3.0 ** 2 * length, rel=0.12)
    assert tissue.sum() * h ** 3 == pytest.approx(np.pi * (4.5 ** 2 - 3.0 ** 2) * length, rel=0.2)


def test_scanner_noise_level_and_grain() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((40, 40, 40), -860.0, np.float32)
    body = np.ones(flat.shape, bool)
    for sd, kernel in phenotypes.SITES:
        out = phantom.apply_scanner(flat, body, 2.0, sd, kernel, rng)[5:-5, 5:-5, 5:-5]
        assert out.std() == pytest.approx(sd, rel=0.05) and out.mean() == pytest.approx(-860, abs=1)
        neighbours = np.corrcoef(out[:, :, 1:].ravel(), out[:, :, :-1].ravel())[0, 1]
        assert neighbours > 0.2                                 # correlated, not white
    outside = phantom.apply_scanner(flat, np.zeros(flat.shape, bool), 2.0, 30.0, 1.0, rng)
    assert np.allclose(outside, -860.0, atol=1e-3)


def test_centrilobular_fraction_and_upper_zone() -> None:
    lung = np.zeros((60, 30, 30), bool)
    lung[5:55, 5:25, 5:25] = True
    weight = phantom.centrilobular_emphysema(lung, 2.0, 0.2, np.zeros(lung.shape, np.float32),
                                             np.random.default_rng(0))
    assert np.mean(weight[lung] >= 0.5) == pytest.approx(0.2, abs=0.01)
    assert weight[~lung].max() == 0
    assert weight[40:55][lung[40:55]].mean() > 2 * weight[5:20][lung[5:20]].mean()


def test_bullae_are_subpleural_and_fill_the_asked_fraction() -> None:
    lung = np.zeros((50, 50, 50), bool)
    lung[5:45, 5:45, 5:45] = True
    air, wall = phantom.paraseptal_bullae(lung, 2.0, 0.03, np.random.default_rng(0))
    filled = air[lung].sum() / lung.sum()
    assert 0.03 <= filled <= 0.03 + (4 / 3) * np.pi * (16.0 / 2.0) ** 3 / lung.sum()
    depth = ndi.distance_transform_edt(lung) * 2.0             # mm from the pleura, up to 40 mm here
    assert depth[air > 0.5].max() <= 2 * 11.0                  # within two radii (≤ 11 mm at 3 %)
    assert np.average(depth, weights=air) < 0.6 * depth[lung].mean()


def test_warp_scales_lung_volume() -> None:
    atlas = load_atlas_mask(8.0)
    base = (sitk.GetArrayFromImage(atlas) > 0).sum()
    warped = phantom.warp_atlas(atlas, (1.1, 1.1, 1.1), np.random.default_rng(0), displacement_sd_mm=0.0)
    assert (sitk.GetArrayFromImage(warped) > 0).sum() / base == pytest.approx(1.1 ** 3, rel=0.05)


def test_gold_stage_boundaries() -> None:
    assert phenotypes.gold_stage(80.0, 0.70) == 0
    assert phenotypes.gold_stage(79.99, 0.70) == -1
    assert phenotypes.gold_stage(80.0, 0.6999) == 1
    assert phenotypes.gold_stage(50.0, 0.5) == 2
    assert phenotypes.gold_stage(49.9, 0.5) == 3
    assert phenotypes.gold_stage(29.9, 0.5) == 4
