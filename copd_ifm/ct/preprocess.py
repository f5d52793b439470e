"""``copd-ifm preprocess``: a cohort of chest CTs → a patch store (layout in :mod:`copd_ifm.ct.store`).

Once per store: the resolved config, the atlas landmarks and the landmark
graph. Then each subject of this shard (manifest rows ``K, K+N, K+2N, ...``
for ``--shard K/N``) runs in a pool of worker processes with a progress bar.
Re-runs skip subjects whose record is ``ok``, made from the same input files
and settings, and whose patch file matches its checksum; they redo failed,
partial and changed ones. A bad subject is recorded in ``failures.csv`` and
never stops the run; a full disk does (a one-line error, no temp file left).

A store belongs to one manifest (recorded in its ``config.yaml``): filling it
from another is refused unless ``force``. One preprocess per store and shard
runs at a time (``.preprocess*.lock``); temporary files of killed runs are
removed at start.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.cohort.atlas import load_atlas_mask
from copd_ifm.cohort.config import CohortConfig, read_manifest_csv
from copd_ifm.ct import store as st
from copd_ifm.ct.graph import landmark_graph
from copd_ifm.ct.landmarks import atlas_landmarks, landmark_table, step_voxels
from copd_ifm.ct.lung_mask import BACKENDS, require_backend
from copd_ifm.ct.store import PatchStore
from copd_ifm.ct.subject import Settings, SubjectTask, crash_record, init_worker, run_subject, work
from copd_ifm.errors import UserError

log = logging.getLogger(__name__)

#: Config fields that change what the store holds: a store built with other values is not reused.
STORE_FIELDS = ("spacing_mm", "patch_size", "landmark_step_mm", "landmark_min_lung_fraction", "lung_seg",
                "min_lung_volume_l", "registration", "dicom", "fov", "lung_model_path")
#: STORE_FIELDS added after stores were first written.
LATER_FIELDS = ("dicom", "fov", "lung_model_path")
SID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
QC_SAMPLES = 8
LUNG_SEG = ("auto",) + BACKENDS


def read_manifest(cohort: CohortConfig, qc_samples: int = QC_SAMPLES) -> list[SubjectTask]:
    """Tasks for every manifest row (paths relative to the manifest); the first ``qc_samples`` get previews."""
    path = cohort.manifest_path
    if not path.is_file():
        raise UserError(f"manifest not found: {path} (cohort {cohort.name!r}: set `manifest` to a CSV with "
                        "columns sid,image[,lung_mask])")
    table = read_manifest_csv(path, dtype=str, keep_default_na=False)
    for column in ("sid", "image"):
        if column not in table.columns:
            raise UserError(f"{path}: missing column {column!r} (need sid,image[,lung_mask])")
    tasks = []
    seen: set[str] = set()
    for row, item in enumerate(table.itertuples(index=False), start=2):
        sid = str(item.sid).strip()
        if not SID_PATTERN.match(sid):
            raise UserError(f"{path} line {row}: sid {sid!r} must be letters, digits, '.', '_' or '-' "
                            "(it names the subject's files)")
        if sid in seen:
            raise UserError(f"{path} line {row}: duplicate sid {sid!r}; make sids unique")
        seen.add(sid)
        image = str(item.image).strip()
        mask = str(getattr(item, "lung_mask", "") or "").strip()
        tasks.append(SubjectTask(sid, cohort.root / image if image else None,
                                 cohort.root / mask if mask else None, qc=len(tasks) < qc_samples,
                                 series_uid=str(getattr(item, "series_uid", "") or "").strip()))
    if not tasks:
        raise UserError(f"{path}: no subjects (add rows sid,image)")
    return tasks


def store_settings(cohort: CohortConfig) -> dict[str, Any]:
    """The cohort fields that decide a store's content (``STORE_FIELDS``), as plain values."""
    return {k: v for k, v in cfg.to_dict(cohort).items() if k in STORE_FIELDS}


def _check_manifest(cohort: CohortConfig, out: Path, before: dict[str, Any], force: bool) -> None:
    """UserError if the store at ``out`` was filled from another manifest than ``cohort``'s (unless ``force``)."""
    theirs, ours = before.get("manifest"), str(cohort.manifest_path.resolve())
    if theirs and theirs != ours and not force:
        raise UserError(f"{out} holds cohort {before.get('name')!r} (manifest {theirs}), not cohort "
                        f"{cohort.name!r} (manifest {ours}); use another --out, or pass --force to refill it "
                        "(subjects whose image or mask differ are then processed again)")


def prepare_store(cohort: CohortConfig, out: Path, force: bool = False) -> Settings:
    """Write the once-per-store files (config, landmarks, graph) unless present, and check that an
    existing store was built with the same settings and from the same manifest (see
    :func:`_check_manifest`); returns the subjects' shared settings."""
    corners = atlas_landmarks(cohort.spacing_mm, cohort.patch_size, cohort.landmark_step_mm,
                              cohort.landmark_min_lung_fraction)
    table = landmark_table(corners, cohort.spacing_mm)
    now = store_settings(cohort)
    with st.locked(out):
        existing = out / st.CONFIG
        before = (yaml.safe_load(existing.read_text(encoding="utf-8")) or {}) if existing.is_file() else {}
        if before:
            # a store from before a field existed was built without it: its subjects redo (settings hash)
            changed = sorted(k for k in now if before.get(k, now[k] if k in LATER_FIELDS else None) != now[k])
            if changed:
                raise UserError(f"{out} was built with other settings ({', '.join(changed)} differ); "
                                "use another --out or delete that store")
            _check_manifest(cohort, out, before, force)
        graph_ok = (out / st.GRAPH).is_file() and _loads(out / st.GRAPH)
        if not (graph_ok and all((out / n).is_file() for n in (st.CONFIG, st.LANDMARKS_CSV, st.LANDMARKS_NPY))):
            st.write_csv(out / st.LANDMARKS_CSV, table)
            files.save_npy(out / st.LANDMARKS_NPY, corners)
            graph = landmark_graph(corners, step_voxels(cohort.landmark_step_mm, cohort.spacing_mm))
            files.save_torch(out / st.GRAPH, st.graph_tensors(graph))
            cfg.save_resolved(cohort, out / st.CONFIG)               # last: marks the store files complete
        elif before.get("manifest") != str(cohort.manifest_path.resolve()):
            cfg.save_resolved(cohort, out / st.CONFIG)               # --force: the store now follows this manifest
    return Settings(store=out, spacing_mm=cohort.spacing_mm, patch_size=cohort.patch_size,
                    lung_seg=cohort.lung_seg, min_lung_volume_l=cohort.min_lung_volume_l,
                    registration=cohort.registration, dicom=cohort.dicom, fov=cohort.fov,
                    lung_model_path=cohort.lung_model_path,
                    direction=tuple(load_atlas_mask(cohort.spacing_mm).GetDirection()),
                    landmarks_mm=table[["x_mm", "y_mm", "z_mm"]].to_numpy(), settings_hash=st.settings_hash(now))


def _loads(graph: Path) -> bool:
    """Whether ``graph.pt`` loads as plain tensors (an older store pickled the graph object)."""
    try:
        st.load_graph(graph)
    except UserError:
        return False
    return True


def _pool(workers: int, settings: Settings) -> ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: ITK's thread pool does not survive a fork
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(settings, threads, os.getpid()))


def _run(tasks: list[SubjectTask], settings: Settings, workers: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """Results as they complete; ``workers`` processes, or this process when 1.

    A worker that dies (a crash inside a native library on a damaged file)
    breaks the pool and every subject still queued in it. The subjects that
    were running then (their ``records/<sid>.running`` marker is left) are
    tried again alone, where a crash is their own failure; the others go to a
    fresh pool. The run goes on either way, except for a UserError (a full
    disk), which cancels the queued subjects and propagates.
    """
    if workers == 1:
        yield from (run_subject(t, settings) for t in tasks)
        return
    pending = tasks
    while pending:
        broken = []
        with _pool(workers, settings) as pool:
            futures = {pool.submit(work, t): t for t in pending}
            try:
                for future in as_completed(futures):
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken.append(futures[future])
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)     # not the queued subjects: stop now
                raise
        suspects = [t for t in broken if st.running_path(settings.store, t.sid).exists()] or broken
        for task in suspects:
            with _pool(1, settings) as pool:
                try:
                    yield pool.submit(work, task).result()
                except BrokenProcessPool:
                    yield crash_record(task, settings), False
        pending = [t for t in broken if t not in suspects]


def _progress(records: Iterable[tuple[dict[str, Any], bool]], total: int, name: str) -> Counter:
    """Consume ``(record, skipped)`` results under a progress bar; counts of ok, skipped, failed."""
    counts: Counter = Counter()
    reasons: Counter = Counter()
    with logging_redirect_tqdm(), tqdm(total=total, unit="subject", desc=f"preprocess {name}",
                                       dynamic_ncols=True) as bar:
        for record, skipped in records:
            counts["skipped" if skipped else record["status"]] += 1
            if record.get("series_note") and not skipped:
                log.info("%s: %s", record["sid"], record["series_note"])
            if record["status"] != "ok":
                reasons[record.get("reason_code") or "other"] += 1
                log.warning("%s failed: %s", record["sid"], record["error"])
            bar.set_postfix(ok=counts["ok"] + counts["skipped"], failed=counts["failed"], refresh=False)
            bar.update()
    if reasons:
        log.warning("failures by reason: %s", "; ".join(f"{r} ×{n}" for r, n in reasons.most_common()))
    return counts


def preprocess_cohort(cohort: CohortConfig, out: Path | None = None, workers: int = 2,
                      shard: tuple[int, int] = (0, 1), lung_seg: str | None = None,
                      qc_samples: int = QC_SAMPLES, force: bool = False) -> PatchStore:
    """Build (or complete) the patch store of ``cohort`` and return it.

    ``out``: store folder (default ``cohort.store_path``); ``workers``:
    processes; ``shard``: (K, N) processes manifest rows K, K+N, ...;
    ``lung_seg``: overrides ``cohort.lung_seg``; ``force``: fill a store
    built from another manifest. Raises UserError when the store ends up with
    no successfully preprocessed subject, when another preprocess of this
    store and shard is running, or when the disk is full.
    """
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--shard {k}/{n}: need 0 <= K < N")
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    if lung_seg is not None:
        if lung_seg not in LUNG_SEG:
            raise UserError(f"--lung-seg {lung_seg!r}: choose one of {', '.join(LUNG_SEG)}")
        cohort = dataclasses.replace(cohort, lung_seg=lung_seg)
    require_backend(cohort.lung_seg, cohort.lung_model_path)
    from copd_ifm.cohort.synthetic import ensure_cohort   # generates a synthetic cohort on first use

    ensure_cohort(cohort)
    out = Path(out) if out is not None else cohort.store_path
    tasks = read_manifest(cohort, qc_samples)
    lock = out / (".preprocess.lock" if n == 1 else f".preprocess-{k}-of-{n}.lock")
    with files.file_lock(lock, f"preprocess (shard {k}/{n})", timeout=0):
        swept = files.sweep_temps(out)
        if swept:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", swept, out)
        return _fill(cohort, out, tasks, prepare_store(cohort, out, force), (k, n), workers)


def _fill(cohort: CohortConfig, out: Path, tasks: list[SubjectTask], settings: Settings, shard: tuple[int, int],
          workers: int) -> PatchStore:
    """Process this shard's subjects into the prepared store ``out`` and merge the index."""
    k, n = shard
    mine = tasks[k::n]
    log.info("preprocess %s: %d of %d subjects (shard %d/%d) → %s", cohort.name, len(mine), len(tasks), k, n, out)
    counts = _progress(_run(mine, settings, min(workers, max(1, len(mine)))), len(mine), cohort.name)
    index = st.merge_records(out, [t.sid for t in tasks])
    log.info("preprocess %s: %d done now, %d already done, %d failed (%s)", cohort.name, counts["ok"],
             counts["skipped"], counts["failed"], out / st.FAILURES)
    if index.empty:
        raise UserError(f"shard {k}/{n} holds none of the {len(tasks)} subjects and the store has no others")
    if not (index["status"] == "ok").any():
        first = "; ".join(f"{r.sid}: {r.error}" for r in index.head(3).itertuples())
        raise UserError(f"no subject could be preprocessed ({first}); see {out / st.FAILURES}")
    return PatchStore(out)
