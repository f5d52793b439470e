"""``copd-ifm evaluate``: cross-validated outcome read-out of feature tables vs densitometry.

Joins the cohort's manifest (outcomes), the densitometry baseline from the
patch store and any number of features tables, scores every method on the
same folds (:mod:`copd_ifm.evaluation.cv`) and writes the report, tables and
plots (:mod:`copd_ifm.evaluation.report`, :mod:`copd_ifm.evaluation.plots`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from copd_ifm.cohort.config import CohortConfig
from copd_ifm.errors import UserError
from copd_ifm.evaluation import compare, plots
from copd_ifm.evaluation.cv import CHANCE, DENSITOMETRY, assign_folds, chance_folds, cross_validate, repeated_folds
from copd_ifm.evaluation.features import read_feature_sets
from copd_ifm.evaluation.outcomes import Outcome, outcome_values, parse_outcomes, range_warnings, read_manifest
from copd_ifm.evaluation.readout import DEFAULT_READOUT, READOUTS, SAMPLES_PER_DIM, capacity
from copd_ifm.evaluation.report import Evaluation, summarize, write_report

log = logging.getLogger(__name__)

#: Method name of the classical baseline and its columns (%, HU, litres).
CHANCE_TEXT = ("no features: each test fold predicted by its training part's mean (continuous; R² about 0 or "
               "below) or most common level (ordinal); a method has learned something only above this row")
DENSITOMETRY_COLUMNS = ("laa950_pct", "perc15_hu", "lung_volume_l")


def default_report_dir(cohort: CohortConfig) -> Path:
    """``reports/<cohort name>`` under the working directory."""
    return Path("reports") / cohort.name


def load_densitometry(cohort: CohortConfig) -> pd.DataFrame:
    """The patch store's densitometry table: columns sid, laa950_pct, perc15_hu, lung_volume_l."""
    from copd_ifm.ct.store import PatchStore  # lazily: the store pulls in the CT stack

    return PatchStore(cohort.store_path).densitometry()


def densitometry_features(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Densitometry table → sid-indexed features ``[n, 3]``; rows with a missing value dropped."""
    missing = [c for c in ("sid", *DENSITOMETRY_COLUMNS) if c not in frame.columns]
    if missing:
        raise UserError(f"{where}: densitometry has no column {missing[0]!r} "
                        f"(expected sid, {', '.join(DENSITOMETRY_COLUMNS)}; re-run `copd-ifm preprocess`)")
    table = frame.assign(sid=frame["sid"].astype(str)).set_index("sid")[list(DENSITOMETRY_COLUMNS)]
    table = table.astype(float).dropna()
    table.attrs.update(path=where)
    return table


def too_few(y: pd.Series, outcome: Outcome, folds: int, seed: int) -> str:
    """Why one method's subjects with ``outcome`` (``y``) cannot fill ``folds`` folds, or "" when they can."""
    if len(y) < folds:
        return f"only {len(y)} subjects have the outcome and these features, fewer than --folds {folds}"
    try:
        assign_folds(y, outcome, folds, seed)
    except UserError as exc:
        return str(exc).split(": ", 1)[-1]
    return ""


def _with_repeat(frame: pd.DataFrame, repeat: int) -> pd.DataFrame:
    """``frame`` with a ``repeat`` column after ``fold``."""
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("fold") + 1, "repeat", repeat)
    return frame


def evaluate(cohort: CohortConfig, feature_sources: list[str], outcomes: list[str], folds: int = 5,
             seed: int = 0, out: Path | None = None, densitometry: pd.DataFrame | None = None,
             samples_per_dim: int = SAMPLES_PER_DIM, readout: str | None = None, repeats: int = 1,
             reference: str | None = None, sensitivity: list[str] | None = None) -> pd.DataFrame:
    """Cross-validate every feature set and the densitometry baseline on ``outcomes``.

    ``feature_sources``: run folders (``RUN/features.parquet``) or features
    tables; each contributes one method per feature set. ``densitometry``: the
    baseline table (sid, laa950_pct, perc15_hu, lung_volume_l); default: read
    from the cohort's patch store. Writes the report into ``out`` (default
    :func:`default_report_dir`) and returns the per-fold results (one row per
    method × outcome × repeat × fold, columns of
    :data:`copd_ifm.evaluation.cv.RESULT_COLUMNS` plus ``repeat``).

    ``readout``: the declared protocol (:mod:`copd_ifm.evaluation.readout`;
    default the cohort's ``readout``, else :data:`DEFAULT_READOUT`);
    ``sensitivity``: protocols also run on the same folds and shown as a
    sensitivity table only (default: every other protocol; ``[]``: none).
    ``repeats``: repeated k-fold (seed ``seed + r`` for repeat ``r``).
    ``reference``: the method every other is compared with, paired over the
    folds (:mod:`copd_ifm.evaluation.compare`); default the first feature set
    (densitometry when there is none).

    An outcome whose subjects cannot be split into ``folds`` (too few, one
    level, or every level rarer than ``folds``) is skipped with the reason in
    the report; a UserError only when every outcome is. So is a method with too
    few subjects for the folds on an outcome (for that outcome). Out-of-range outcome
    values and subjects missing from a feature set are logged as warnings and
    listed in the report.
    """
    chosen = parse_outcomes(outcomes)
    if samples_per_dim < 1:
        raise UserError(f"--samples-per-dim must be at least 1, got {samples_per_dim}")
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    readout = readout or cohort.readout or DEFAULT_READOUT
    sensitivity = [r for r in READOUTS if r != readout] if sensitivity is None else list(sensitivity)
    for name in [readout, *sensitivity]:
        if name not in READOUTS:
            raise UserError(f"unknown read-out {name!r} (valid: {', '.join(READOUTS)})")
    sensitivity = [r for r in dict.fromkeys(sensitivity) if r != readout]
    manifest = read_manifest(cohort.manifest_path, cohort.name)
    warnings = range_warnings(chosen, manifest, cohort.outcomes, str(cohort.manifest_path))
    if densitometry is None:
        base = densitometry_features(load_densitometry(cohort), str(cohort.store_path))
        base_text = f"%LAA-950 (%), Perc15 (HU), lung volume (L) from the patch store {cohort.store_path}"
    else:
        base = densitometry_features(densitometry, "densitometry table")
        base_text = "%LAA-950 (%), Perc15 (HU), lung volume (L) from the given densitometry table"
    methods = {DENSITOMETRY: base}
    descriptions = {DENSITOMETRY: base_text}
    for source in feature_sources:
        for name, frame in read_feature_sets(source).items():
            if name in methods:
                raise UserError(f"{source}: feature set {name!r} is already loaded from "
                                f"{methods[name].attrs.get('path')} (give each run a distinct name)")
            meta = frame.attrs["meta"]
            methods[name] = frame
            descriptions[name] = (f"{frame.shape[1]} features from {frame.attrs['path']}"
                                  + (f", config hash {meta['config_hash']}" if meta.get("config_hash") else ""))
    if reference is None:
        reference = next((m for m in methods if m != DENSITOMETRY), DENSITOMETRY)
    elif reference not in methods:
        raise UserError(f"--reference {reference!r} is not a loaded method (loaded: {', '.join(methods)})")
    for name, frame in methods.items():
        stray = len(frame.index.difference(manifest.index))
        if stray:
            log.warning("%s: %d subjects are not in the manifest %s and are ignored", name, stray,
                        cohort.manifest_path)
    absent = {name: manifest.index.difference(frame.index) for name, frame in methods.items()}

    # First every outcome's subjects and folds, so bad input stops before any model is fitted.
    plans, counts = [], []
    for outcome in chosen:
        y = outcome_values(outcome, manifest, cohort.outcomes, str(cohort.manifest_path)).dropna()
        usable = y.index
        missing = {}
        kept = {}
        # a problem of the outcome itself (too few subjects or levels) skips the outcome below, not each method
        outcome_ok = not too_few(y, outcome, folds, seed)
        for name, frame in methods.items():
            reason = too_few(y[y.index.isin(frame.index)], outcome, folds, seed) if outcome_ok else ""
            missing[f"missing:{name}"] = 0 if reason else int((~y.index.isin(frame.index)).sum())
            if reason:
                warnings.append(f"{name} skipped for {outcome.name}: {reason}")
                continue
            kept[name] = frame
            usable = usable[usable.isin(frame.index)]
        counts.append({"outcome": outcome.name, "kind": outcome.kind, "manifest": len(manifest),
                       "outcome_missing": len(manifest) - len(y), "features_missing": len(y) - len(usable),
                       "used": len(usable), "majority_level": None, "majority_share": None, **missing})
        y = y.loc[usable]
        if not kept:
            warnings.append(f"{outcome.name} skipped: no method has enough subjects for the folds")
            continue
        try:
            fold_list = repeated_folds(y, outcome, folds, seed, repeats)
        except UserError as exc:
            warnings.append(f"{outcome.name} skipped: {exc}")
            continue
        if outcome.ordinal:
            shares = y.value_counts(normalize=True)
            counts[-1].update(majority_level=outcome.levels[int(shares.index[0])], majority_share=float(shares.iloc[0]))
        plans.append((outcome, y, fold_list, kept))
        if reference not in kept:
            warnings.append(f"{outcome.name}: no paired comparisons, the reference {reference} was skipped there")
    used = {name for *_, kept in plans for name in kept}
    warnings += [f"{name}: {len(missed)} of {len(manifest)} manifest subjects have no features (e.g. {missed[0]!r}; "
                 f"{methods[name].attrs.get('path')}); they are left out for every method"
                 for name, missed in absent.items() if len(missed) and name in used]
    for line in warnings:
        log.warning("%s", line)
    if not plans:
        raise UserError(f"every outcome was skipped; {warnings[-1]}")
    chosen = [outcome for outcome, _, _, _ in plans]

    results, predictions, sensitivity_results = [], [], []
    fits = sum(len(kept) for *_, kept in plans) * folds * repeats * (1 + len(sensitivity))
    with tqdm(total=fits, desc="evaluate", unit="fit") as bar:
        for outcome, y, fold_list, kept in plans:
            for r, fold_of in enumerate(fold_list):
                cv = cross_validate(kept, y, fold_of, outcome, samples_per_dim, progress=lambda: bar.update(),
                                    readout=readout)
                results += [_with_repeat(cv.results, r), _with_repeat(chance_folds(y, fold_of, outcome), r)]
                predictions.append(_with_repeat(cv.predictions, r))
                # a set within the capacity of every training part gets the same unpenalised fit under each
                # protocol: its rows are reused instead of refitted
                same = [m for m, frame in kept.items() if frame.shape[1] <= capacity(len(y) - -(-len(y) // folds),
                                                                                    samples_per_dim)]
                refit = {m: frame for m, frame in kept.items() if m not in same}
                for other in sensitivity:
                    extra = cross_validate(refit, y, fold_of, outcome, samples_per_dim, progress=lambda: bar.update(),
                                           readout=other).results if refit else None
                    reused = cv.results[cv.results["method"].isin(same)]
                    bar.update(len(reused))
                    sensitivity_results.append(_with_repeat(pd.concat([f for f in (extra, reused) if f is not None],
                                                                      ignore_index=True), r).assign(readout=other))
    results = pd.concat(results, ignore_index=True)
    # the family of comparisons is feature sets × outcomes; the chance row is a floor, shown, not compared
    differences = compare.fold_differences(results[results["method"] != CHANCE], reference)
    comparisons = compare.compare(differences, reference) if len(differences) else None
    ev = Evaluation(
        cohort=cohort.name,
        synthetic=(f"generated, n={cohort.synthetic.n}, seed {cohort.synthetic.seed}"
                   if cohort.synthetic is not None else None),
        folds=folds, seed=seed, samples_per_dim=samples_per_dim, outcomes=chosen,
        methods={**descriptions, CHANCE: CHANCE_TEXT},
        counts=pd.DataFrame(counts), results=results,
        predictions=pd.concat(predictions, ignore_index=True), warnings=warnings, readout=readout, repeats=repeats,
        reference=reference, comparisons=comparisons, differences=differences,
        sensitivity=pd.concat(sensitivity_results, ignore_index=True) if sensitivity_results else None)

    out = Path(out) if out is not None else default_report_dir(cohort)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(ev.results)
    names = list(methods)
    figures = [plots.plot_metrics(summary, chosen, names, out / "metrics.png")]  # chance: a line on each panel
    if comparisons is not None:
        plots.plot_differences(differences, comparisons, out / "differences.png")  # shown beside its table
    first = ev.predictions[ev.predictions["repeat"] == 0]  # one prediction per subject
    for outcome in chosen:
        if outcome.ordinal:
            figures.append(plots.plot_confusion(first, outcome, names, out / f"confusion_{outcome.name}.png"))
        else:
            figures.append(plots.plot_pred_vs_obs(first, summary, outcome, names,
                                                  out / f"pred_vs_obs_{outcome.name}.png"))
    write_report(ev, out, figures)
    log.info("report written to %s", out / "report.md")
    return ev.results
