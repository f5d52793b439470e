"""The synthetic COPD CT cohort: ``copd-ifm synth`` and the embedded ``demo`` cohort.

Layout of a generated cohort folder (the layout of a real cohort):

- ``images/<sid>.nii.gz``: CT, int16 HU, isotropic spacing, atlas orientation.
- ``masks/<sid>.nii.gz``: lung mask, uint8, 50 right lung and 100 left lung.
- ``manifest.csv``: ``sid,image,lung_mask`` (relative paths) and the COPDGene outcome
  columns ``FEV1pp_utah, FEV1_FVC_utah, finalGold, Emph_Severity, Emph_Paraseptal,
  MMRCDyspneaScor``.
- ``latents.csv``: the hidden ground truth per subject (see :mod:`copd_ifm.cohort.synthetic_subject`).
- ``preview.png``: slices of the mildest and the most severe subject.
- ``synth.json``: the generation parameters; ``"complete": true`` once everything
  above is written, so a complete cohort with the same parameters is reused.

Subject ``i`` draws from ``SeedSequence([seed, i])``: the same seed gives the same
bytes whatever the number of workers, and a smaller cohort is a prefix of a larger one.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from copd_ifm.cohort import phenotypes
from copd_ifm.cohort.config import PARAMS_FILE, CohortConfig
from copd_ifm.cohort.preview import write_preview
from copd_ifm.cohort.synthetic_subject import LATENT_COLUMNS, PARTIAL_DIR, init_worker, make_subject, subject_id
from copd_ifm.files import atomic_write_text, file_lock
from copd_ifm.errors import ManifestNotFound, UserError

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes, so old cohorts are not silently reused.
GENERATOR_VERSION = 1
MANIFEST_FILE = "manifest.csv"
MIN_SPACING_MM, MAX_SPACING_MM = 0.5, 8.0
MANIFEST_COLUMNS = ["sid", "image", "lung_mask", *phenotypes.OUTCOME_COLUMNS]
_LOCK_FILE = ".synth.lock"
_PROBE_PREFIX = ".write-test"
_OWN_FILES = {PARAMS_FILE, PARTIAL_DIR, _LOCK_FILE, f"{_LOCK_FILE}.owner"}


def _params(n: int, seed: int, spacing_mm: float, nuisance: float) -> dict[str, Any]:
    params = {"generator_version": GENERATOR_VERSION, "n": n, "seed": seed, "spacing_mm": float(spacing_mm)}
    if nuisance != phenotypes.DEFAULT_NUISANCE:     # absent at the default: existing cohorts keep matching
        params["nuisance"] = float(nuisance)
    return params


def _describe(params: dict[str, Any]) -> str:
    return (f"n={params.get('n')}, seed={params.get('seed')}, spacing={params.get('spacing_mm')} mm, "
            f"nuisance {params.get('nuisance', phenotypes.DEFAULT_NUISANCE)}, "
            f"generator v{params.get('generator_version')}")


def _validate(n: int, seed: int, spacing_mm: float, workers: int, nuisance: float) -> None:
    if n < 1:
        raise UserError(f"n={n}: a cohort needs at least one subject (give --n 1 or more)")
    if seed < 0:
        raise UserError(f"seed={seed}: the seed must be >= 0")
    if not MIN_SPACING_MM <= spacing_mm <= MAX_SPACING_MM:
        raise UserError(f"spacing={spacing_mm} mm: give a voxel spacing between {MIN_SPACING_MM} and "
                        f"{MAX_SPACING_MM} mm (2 for the demo, 1 like COPDGene)")
    if workers < 1:
        raise UserError(f"workers={workers}: need at least 1 worker process")
    try:
        phenotypes.check_nuisance(nuisance)
    except ValueError as exc:
        raise UserError(f"synthetic cohort: {exc} (1 is the default site table, 0 removes the site effect)") from exc


def _read_params(out: Path) -> dict[str, Any] | None:
    path = out / PARAMS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable cohort parameters ({exc}); delete {out} and generate again") from exc


def _check_folder(out: Path, params: dict[str, Any]) -> bool:
    """True if ``out`` already holds the complete cohort ``params``; raise if it holds anything else."""
    existing = _read_params(out)
    if existing is None:
        others = sorted(p.name for p in out.iterdir()
                        if p.name not in _OWN_FILES and not p.name.startswith(_PROBE_PREFIX))
        if others:
            raise UserError(f"{out} is not empty ({', '.join(others[:3])}{', …' if len(others) > 3 else ''}) "
                            f"and holds no synthetic cohort: choose a new or empty folder")
        return False
    existing_params = {k: existing.get(k) for k in params.keys() | existing.keys() if k != "complete"}
    if existing_params != params:
        raise UserError(f"{out} holds a different synthetic cohort ({_describe(existing)}) than asked for "
                        f"({_describe(params)}): choose another folder or delete that one")
    return bool(existing.get("complete")) and (out / MANIFEST_FILE).is_file()


def _prepare(out: Path) -> None:
    """Create ``out`` or fail with a one-line error if it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f"{_PROBE_PREFIX}{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: cannot write the cohort there ({exc.strerror or exc}); "
                        f"choose a writable folder") from exc


def _run(tasks: list[tuple[str, int, int, float, float]], workers: int, spacing_mm: float) -> list[dict[str, Any]]:
    """Generate subjects in ``workers`` processes (in this process when 1) with a progress bar."""
    bar = tqdm(total=len(tasks), desc="synth", unit="subject", leave=False)
    rows = []
    try:
        if workers == 1 or len(tasks) == 1:
            threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            init_worker(spacing_mm)
            try:
                for task in tasks:
                    rows.append(make_subject(task))
                    bar.update()
            finally:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        else:
            # spawn: safe even when the caller has threads (torch, tqdm) running.
            with ProcessPoolExecutor(min(workers, len(tasks)), multiprocessing.get_context("spawn"),
                                     initializer=init_worker, initargs=(spacing_mm,)) as pool:
                for row in pool.map(make_subject, tasks):
                    rows.append(row)
                    bar.update()
    finally:
        bar.close()
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    table = pd.DataFrame(rows).sort_values("sid")
    atomic_write_text(out / "latents.csv", table[LATENT_COLUMNS].to_csv(index=False))
    burden = table["cle_fraction"] + table["pse_fraction"]
    picks = table.loc[[burden.idxmin(), burden.idxmax()]].drop_duplicates("sid")
    write_preview([(f"{r.sid}, {label}: CLE {100 * r.cle_fraction:.1f} %, PSE {100 * r.pse_fraction:.1f} %, "
                    f"FEV1pp {r.FEV1pp_utah:.0f}", out / r.image, out / r.lung_mask)
                   for label, r in zip(("mildest", "most severe"), picks.itertuples())],
                  out / "preview.png")
    atomic_write_text(out / MANIFEST_FILE, table[MANIFEST_COLUMNS].to_csv(index=False))


def generate_cohort(out: Path, n: int = 48, seed: int = 0, spacing_mm: float = 2.0, workers: int = 2,
                    nuisance: float = phenotypes.DEFAULT_NUISANCE) -> Path:
    """Generate (or reuse) the synthetic cohort ``n``/``seed``/``spacing_mm`` in ``out``; return its manifest.

    ``nuisance`` scales the scanner differences between sites (0: none, 1: the
    default table, 2: doubled; :func:`copd_ifm.cohort.phenotypes.site_scanner`). An existing complete
    cohort with the same parameters is reused; an unfinished one resumes; a folder holding anything else is a :class:`UserError`. Files are
    written atomically; subjects are generated in ``workers`` processes.
    """
    _validate(n, seed, spacing_mm, workers, nuisance)
    out = Path(out).expanduser().absolute()
    params = _params(n, seed, spacing_mm, nuisance)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a folder for the cohort")
    if out.is_dir() and _check_folder(out, params):
        log.info("reusing the synthetic cohort in %s (%s)", out, _describe(params))
        return out / MANIFEST_FILE
    _prepare(out)
    with file_lock(out / _LOCK_FILE, "the synthetic cohort"):  # several processes may ask for the demo at once
        if _check_folder(out, params):          # another process finished it meanwhile
            return out / MANIFEST_FILE
        atomic_write_text(out / PARAMS_FILE, json.dumps({**params, "complete": False}, indent=1))
        for sub in ("images", "masks", PARTIAL_DIR):
            (out / sub).mkdir(exist_ok=True)
        done = {}
        for index in range(n):
            sid = subject_id(index)
            row_file = out / PARTIAL_DIR / f"{sid}.json"
            if row_file.is_file() and (out / "images" / f"{sid}.nii.gz").is_file() \
                    and (out / "masks" / f"{sid}.nii.gz").is_file():
                done[index] = json.loads(row_file.read_text(encoding="utf-8"))
        if done:
            log.info("resuming the synthetic cohort in %s: %d of %d subjects already written", out, len(done), n)
        tasks = [(str(out), i, seed, float(spacing_mm), float(nuisance)) for i in range(n) if i not in done]
        rows = list(done.values()) + _run(tasks, workers, spacing_mm)
        _write_tables(out, rows)
        atomic_write_text(out / PARAMS_FILE, json.dumps({**params, "complete": True}, indent=1))
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    log.info("wrote %d synthetic subjects to %s", n, out)
    return out / MANIFEST_FILE


def ensure_cohort(cohort: CohortConfig) -> Path:
    """The manifest of ``cohort``, generating a synthetic cohort on first use.

    A cohort with ``synthetic`` set is generated in its manifest's folder when
    missing (then reused). A real cohort whose manifest is missing is a
    :class:`UserError` saying how to point at it.
    """
    manifest = cohort.manifest_path
    if cohort.synthetic is None:
        if not manifest.is_file():
            raise ManifestNotFound(cohort.name, manifest)
        return manifest
    if manifest.is_file() and not (manifest.parent / PARAMS_FILE).is_file():
        return manifest
    if manifest.name != MANIFEST_FILE:
        raise UserError(f"cohort {cohort.name!r}: a synthetic cohort's manifest must be named {MANIFEST_FILE}, "
                        f"got {manifest} (fix the manifest field)")
    spec = cohort.synthetic
    if not manifest.is_file():
        log.info("cohort %r not found at %s: generating the synthetic demo cohort on first use "
                 "(%d subjects, %.1f mm; about a minute), later runs reuse it",
                 cohort.name, manifest.parent, spec.n, cohort.spacing_mm)
    return generate_cohort(manifest.parent, n=spec.n, seed=spec.seed, spacing_mm=cohort.spacing_mm,
                           workers=max(1, min(4, os.cpu_count() or 1)), nuisance=spec.nuisance)
