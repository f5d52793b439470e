"""One synthetic subject, the unit of work of a cohort: draw latents, render, write, describe.

Kept apart from :mod:`copd_ifm.cohort.synthetic` so that worker processes import
only what rendering needs (no pandas, no matplotlib).

Ground-truth fields per subject (``latents.csv``): ``emphysema`` (fraction of lung
to destroy), ``cle_share`` (its centrilobular part; the rest is para-septal),
``airway`` (airway-disease factor, 0..1), ``site`` with its ``noise_sd_hu`` and
``kernel_sigma_mm``, ``body_size`` (z-score), and as measured on the rendered
subject ``lung_volume_l``, ``cle_fraction``, ``pse_fraction`` (fractions of the
lung mask) and ``laa950_pct`` (% of mask voxels < −950 HU in the written image).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from copd_ifm.cohort import phenotypes
from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.phantom import render_subject
from copd_ifm.files import atomic_write, atomic_write_text

#: Per-subject rows of an unfinished run, so that it resumes after the last written subject.
PARTIAL_DIR = ".partial"
LATENT_COLUMNS = ["sid", "emphysema", "cle_share", "airway", "site", "noise_sd_hu", "kernel_sigma_mm",
                  "body_size", "lung_volume_l", "cle_fraction", "pse_fraction", "laa950_pct"]


def subject_id(index: int) -> str:
    """Subject ID of the ``index``-th (0-based) synthetic subject: ``SYN0001``, ``SYN0002``, …"""
    return f"SYN{index + 1:04d}"


def init_worker(spacing_mm: float) -> None:
    """Worker set-up: one SimpleITK thread (parallelism is over subjects) and the atlas cached."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    load_atlas_mask(spacing_mm)


def _write_image(image: sitk.Image, path: Path) -> None:
    """Write a compressed NIfTI atomically (the temporary name keeps the .nii.gz suffix)."""
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))


def make_subject(task: tuple[str, int, int, float, float]) -> dict[str, Any]:
    """Subject ``index`` of cohort ``(out, index, seed, spacing_mm, nuisance)``: write its image and mask.

    Draws from ``SeedSequence([seed, index])``; ``nuisance`` scales the scanner differences
    between sites (:func:`copd_ifm.cohort.phenotypes.site_scanner`). Returns the subject's
    manifest fields (``sid``, ``image``, ``lung_mask``, outcome columns) and ground-truth
    fields, also saved as ``<out>/.partial/<sid>.json``.
    """
    out_text, index, seed, spacing_mm, nuisance = task
    out = Path(out_text)
    sid = subject_id(index)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    latents = phenotypes.sample_latents(rng, nuisance)
    rendered = render_subject(latents, load_atlas_mask(spacing_mm), rng)
    _write_image(rendered.image, out / "images" / f"{sid}.nii.gz")
    _write_image(rendered.mask, out / "masks" / f"{sid}.nii.gz")
    ct = sitk.GetArrayViewFromImage(rendered.image)
    lung = sitk.GetArrayViewFromImage(rendered.mask) > 0
    row = {
        "sid": sid,
        "image": f"images/{sid}.nii.gz",
        "lung_mask": f"masks/{sid}.nii.gz",
        **phenotypes.outcomes(rendered.cle_fraction, rendered.pse_fraction, latents.airway, rng),
        "emphysema": round(latents.emphysema, 5),
        "cle_share": round(latents.cle_share, 5),
        "airway": round(latents.airway, 5),
        "site": latents.site,
        "noise_sd_hu": round(latents.noise_sd_hu, 4),
        "kernel_sigma_mm": round(latents.kernel_sigma_mm, 4),
        "body_size": round(latents.body_size, 5),
        "lung_volume_l": round(rendered.lung_volume_l, 4),
        "cle_fraction": round(rendered.cle_fraction, 5),
        "pse_fraction": round(rendered.pse_fraction, 5),
        "laa950_pct": round(100.0 * float(np.mean(ct[lung] < -950)), 3),
    }
    atomic_write_text(out / PARTIAL_DIR / f"{sid}.json", json.dumps(row))
    return row
