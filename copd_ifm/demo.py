"""``copd-ifm demo``: the whole chain on the embedded synthetic cohort.

synth → preprocess → pretrain (baseline and IFM ε = 0.1; the untrained encoder as a control) → extract →
evaluate,
each stage through the same functions the CLI stages call, each skipped when
its output already exists (a rerun resumes instead of starting over).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from copd_ifm.cohort.config import CohortConfig, resolve_cohort
from copd_ifm.context.train import pretrain, resolve_pretrain_config, save_untrained
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.evaluation.features import FEATURES_FILE

log = logging.getLogger(__name__)

#: ``--quick``: a first look in a few minutes (one short epoch per model).
QUICK = ["schedule.epochs=1", "schedule.landmarks_per_epoch=48"]


def _pretrain_once(cohort: CohortConfig, config: str, run: Path, overrides: list[str]) -> Path:
    cfg = resolve_pretrain_config(config, cohort, overrides=overrides)
    summary = run / "summary.json"
    if summary.is_file() and json.loads(summary.read_text(encoding="utf-8"))["epochs_done"] >= cfg.schedule.epochs:
        log.info("%s: already trained, reusing it", run)
        return run
    return pretrain(cohort, cfg, run, resume=Checkpointer(run).exists())


def run_demo(out: str | Path = "outputs/demo", quick: bool = False, cohort_spec: str = "demo") -> Path:
    """Run the demo into ``out`` (runs under ``out/runs``, report in ``out/report``); returns the report folder."""
    from copd_ifm.ct.preprocess import preprocess_cohort
    from copd_ifm.evaluation.evaluate import evaluate
    from copd_ifm.evaluation.extract import extract_features

    out = Path(out)
    start = time.perf_counter()
    cohort = resolve_cohort(cohort_spec)
    preprocess_cohort(cohort)  # generates the synthetic cohort first when it is missing
    overrides = QUICK if quick else []
    suffix = "-quick" if quick else ""
    runs = []
    untrained = out / "runs" / f"{cohort.name}-untrained"  # the baseline's initial weights: was anything learned?
    if not Checkpointer(untrained).exists():
        save_untrained(cohort, resolve_pretrain_config("baseline", cohort), untrained)
    # the baseline first: evaluate compares every other feature set with the first one
    for run in [_pretrain_once(cohort, config, out / "runs" / f"{cohort.name}-{config}{suffix}", overrides)
                for config in ("baseline", "ifm")] + [untrained]:
        if not (run / FEATURES_FILE).is_file():
            extract_features(run)
        runs.append(str(run))
    report = out / f"report{suffix}"
    evaluate(cohort, runs, ["logFEV1pp", "logFEV1FVC", "CLE", "Paraseptal", "mMRC"], folds=5, seed=0, out=report)
    log.info("demo finished in %.0f s", time.perf_counter() - start)
    return report
