"""The outcomes study's report: ``results.csv``, ``table2.csv``, ``comparisons.csv``, ``summary.md`` and plots.

``table2.csv`` is shaped like the IFM paper's Table 2: one row per method
(chance, densitometry, untrained encoder, baseline, IFM at each ε), one column
per outcome and metric, cells mean ± sd over every fold of every repeat and
seed, on the tested feature set. The statistics are :mod:`.compare`'s.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.evaluation.plots import plot_differences
from copd_ifm.evaluation.readout import describe as readout_text
from copd_ifm.studies import ct_runs
from copd_ifm.studies.ct_runs import Target
from copd_ifm.studies.folder import check_report_keeps_runs
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.outcomes import compare
from copd_ifm.studies.outcomes.plan import SYNTHETIC, OutcomesStudy
from copd_ifm.studies.shortcut.plots import plot_shortcut

CLAIM = ("Robinson et al. (NeurIPS 2021), Table 2: on COPDGene (5-fold CV), IFM yields improvements on all phenotype "
         "predictions; baseline → best IFM: logFEV1pp R² 0.566 → 0.615 (ε = 0.1), logFEV1FVC R² 0.661 → 0.691, "
         "CLE accuracy 49.6 → 50.0 % (ε = 1.0), para-septal 55.7 → 56.3 %, mMRC 50.4 → 50.6 %; no interval or "
         "test is given. The question here: on this cohort, does IFM at each ε beat the baseline, by how much, and "
         "is that more than the spread over folds and seeds?")
METRIC_LABEL = {"r2": "R²", "accuracy": "acc %", "one_off": "1-off %"}


def trained_rows(study: OutcomesStudy, per_fold: pd.DataFrame) -> pd.DataFrame:
    """The baseline and IFM runs' rows of the tested feature set."""
    return per_fold[per_fold["method"].isin(["baseline", "ifm"]) & (per_fold["features"] == study.features)]


def table_rows(study: OutcomesStudy, per_fold: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(row label, its per-fold rows) in Table 2 order: chance, densitometry, untrained, baseline, IFM ε."""
    untrained = ct_runs.UNTRAINED_FEATURES[study.features]
    rows = [("chance", per_fold[per_fold["method"] == "chance"]),
            ("densitometry", per_fold[per_fold["method"] == "densitometry"]),
            ("untrained encoder", per_fold[per_fold["features"] == untrained])]
    for eps, part in trained_rows(study, per_fold).groupby("epsilon", sort=True):
        rows.append((compare.label(eps), part))
    return rows


def table2(study: OutcomesStudy, per_fold: pd.DataFrame, targets: list[Target]) -> pd.DataFrame:
    """Mean and sd (over folds × repeats × seeds) per row and outcome × metric; accuracies in %."""
    records = []
    for name, part in table_rows(study, per_fold):
        record: dict[str, object] = {"method": name, "runs": int(part["run_id"].replace("", pd.NA).nunique())}
        for t in targets:
            cells = part[part["outcome"] == t.outcome.name]
            for metric in (("r2",) if t.outcome.kind == "continuous" else ("accuracy", "one_off")):
                scale = 1.0 if metric == "r2" else 100.0
                record[f"{t.outcome.name} {METRIC_LABEL[metric]}"] = cells[metric].mean() * scale
                record[f"{t.outcome.name} {METRIC_LABEL[metric]} sd"] = cells[metric].std() * scale
        records.append(record)
    return pd.DataFrame(records)


def _markdown_table2(table: pd.DataFrame) -> list[str]:
    columns = [c for c in table.columns if c not in ("method", "runs") and not c.endswith(" sd")]
    lines = ["| method | runs | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for _, r in table.iterrows():
        cells = []
        for c in columns:
            digits = 3 if c.endswith("R²") else 1
            cells.append("–" if pd.isna(r[c]) else f"{r[c]:.{digits}f} ± {r[c + ' sd']:.{digits}f}")
        lines.append(f"| {r['method']} | {r['runs'] or '–'} | " + " | ".join(cells) + " |")
    return lines


def _signed(value: float, metric: str) -> str:
    return "–" if pd.isna(value) else (f"{value:+.3f}" if metric == "r2" else f"{100 * value:+.1f}")


def _comparison_lines(table: pd.DataFrame) -> list[str]:
    lines = ["| outcome | ε | Δ folds (mean) | adjusted CI | Holm p | MDE 80 % | Δ seeds | seeds 95 % CI | "
             "seeds Holm p | MDE seeds | verdict |", "|---" * 11 + "|"]
    for r in table.itertuples():
        m = r.metric
        lines.append(f"| {r.outcome} ({METRIC_LABEL[m]}) | {r.epsilon:g} | {_signed(r.mean, m)} | "
                     f"{_signed(r.adj_low, m)} … {_signed(r.adj_high, m)} | {r.p_holm:.3g} | "
                     f"{_signed(r.mde, m).lstrip('+')} | {_signed(r.seed_mean, m)} | "
                     f"{_signed(r.seed_low, m)} … {_signed(r.seed_high, m)} | {r.seed_p_holm:.3g} | "
                     f"{_signed(r.seed_mde, m).lstrip('+')} | {r.verdict} |")
    return lines


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One line per outcome: what the tests support, no more."""
    lines = []
    for outcome, part in table.groupby("outcome", sort=False):
        metric = part["metric"].iloc[0]
        said = [f"ε = {r.epsilon:g}: {r.verdict} (Δ {_signed(r.mean, metric)}, adjusted interval "
                f"{_signed(r.adj_low, metric)} … {_signed(r.adj_high, metric)}, smallest detectable "
                f"{_signed(r.mde, metric).lstrip('+')})" for r in part.itertuples()]
        lines.append(f"- **{outcome}** ({METRIC_LABEL[metric]}): " + "; ".join(said) + ".")
    return lines


def _scale_lines(study: OutcomesStudy, cohort: CohortConfig, plans: list[RunPlan], runs: pd.DataFrame,
                 targets: list[Target], skipped: list[str]) -> list[str]:
    s = study.synthetic
    what = (f"**Synthetic cohort** (`copd_ifm.cohort.synthetic`): {len(targets[0].y)} subjects at {s.spacing_mm:g} mm, "
            f"seed {s.seed}. Not real CT: what holds here need not hold on COPDGene, and the reverse."
            if study.cohort == SYNTHETIC else
            f"**Cohort `{cohort.name}`** ({cohort.manifest_path}): {len(targets[0].y)} subjects with features.")
    return [f"- {what}",
            f"- Runs: {len(runs)} of {len(plans)} finished; {study.seeds} seeds × (untrained, baseline ε = 0, IFM ε ∈ "
            f"{{{', '.join(f'{e:g}' for e in sorted(study.epsilons))}}}); pretrain config `{study.pretrain}` with "
            f"{json.dumps(study.pretrain_overrides)}.",
            *ct_runs.training_lines(runs),
            f"- Read-out: {study.repeats} × {study.folds}-fold cross-validation (fold seeds {study.fold_seed}…"
            f"{study.fold_seed + study.repeats - 1}), the same splits for every run and control; "
            f"{readout_text(study.readout, study.samples_per_dim)} Tested features: `{study.features}` (the "
            f"subject mean of the graph encoder's node embeddings is the anchor's subject feature).",
            "- Controls on the same splits: chance (training mean: R² ≤ 0; majority level), densitometry (%LAA-950, "
            "Perc15, lung volume) and the untrained encoder of each seed (its trained runs' initial weights).",
            *[f"- {line}" for line in skipped]]


def write_report(study: OutcomesStudy, out: Path, cohort: CohortConfig, plans: list[RunPlan], targets: list[Target],
                 density: pd.DataFrame, skipped: list[str]) -> pd.DataFrame:
    """Write every report file from the finished runs; returns the comparison table."""
    check_report_keeps_runs(out)
    per_fold, runs = ct_runs.per_fold_results(out, plans, targets, density, study.samples_per_dim, study.readout,
                                              [study.features])
    means = ct_runs.fold_means(per_fold)
    files.atomic_write_text(out / "results.csv", means.to_csv(index=False, float_format="%.8g"))
    table = table2(study, per_fold, targets)
    files.atomic_write_text(out / "table2.csv", table.to_csv(index=False, float_format="%.6g"))
    diffs = compare.seed_differences(trained_rows(study, per_fold))
    comparisons = compare.compare_differences(diffs)
    lines = [f"# Outcomes study (the IFM paper's Table 2), scale `{study.scale}`", "", "## Claim", "", CLAIM, "",
             "## Scale and limits", "", *_scale_lines(study, cohort, plans, runs, targets, skipped), "",
             "## Table 2 on this cohort", "",
             f"Mean ± sd over {study.repeats * study.folds} folds × the seeds; `{study.features}` features.", "",
             *_markdown_table2(table), ""]
    if not comparisons.empty:
        files.atomic_write_text(out / "comparisons.csv", comparisons.to_csv(index=False, float_format="%.6g"))
        lines += ["## IFM − baseline", "", compare.METHOD, "",
                  f"Family: {len(comparisons)} tests (outcomes × ε); accuracies in points of %.", "",
                  *_comparison_lines(comparisons), "", "### Verdicts", "", *verdict_lines(comparisons), ""]
        per_fold_mean = diffs.groupby(["outcome", "method", "repeat", "fold"], as_index=False,
                                      sort=False)["difference"].mean()
        shown = comparisons.assign(method=[compare.label(e) for e in comparisons["epsilon"]],
                                   reference=compare.BASELINE)
        plot_differences(per_fold_mean, shown, out / "differences.png")
    for protocol in [p for p in study.sensitivity if p != study.readout]:
        other, _ = ct_runs.per_fold_results(out, plans, targets, density, study.samples_per_dim, protocol,
                                            [study.features])
        lines += [f"## Sensitivity: read-out protocol `{protocol}`", "",
                  f"The same runs and splits read out by {readout_text(protocol, study.samples_per_dim)} Shown only "
                  f"to judge how much the numbers depend on the protocol; the declared `{study.readout}` stays the "
                  f"result.", "", *_markdown_table2(table2(study, other, targets)), ""]
    plot_shortcut(means, [t.outcome for t in targets], out / "outcomes.png")
    lines += ["## Figures", "", "- `outcomes.png`: score per outcome vs ε (mean ± sd over seeds) with the control "
              "lines.", "- `differences.png`: IFM − baseline per fold (seed mean; dots), its mean "
              "and the Bonferroni-adjusted interval of the folds test.", ""]
    files.atomic_write_text(out / "summary.md", "\n".join(lines))
    return comparisons
