"""The CT shortcut study's report: ``results.csv``, ``summary.md``, ``shortcut.png`` and ``regions.png``.

``results.csv`` has one row per method × ε × τ × seed × features × latent ×
metric; ``value`` is the mean over the CV folds, ``fold_sd`` their sd.
``features``: ``graph`` / ``patch`` (trained encoders, subject means of node
embeddings / patch features), ``untrained`` / ``untrained_patch`` (the same
architecture before any training step, graph / patch level), ``densitometry``
(%LAA-950, Perc15, lung volume) and ``chance`` (the training part's mean or
majority level). ``latent`` also holds the COPD outcomes.

IFM − baseline is tested per (τ, ε, features, latent) by a paired t-test over
seeds (the same seed gives both runs the same initial weights and data order)
with a 95 % t confidence interval; the p-values are Holm-adjusted within the
family of IFM tests (and separately within the baseline − untrained tests), and
only an adjusted p < 0.05 counts as a difference.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.evaluation.readout import describe as readout_text
from copd_ifm.stats import holm, paired_difference
from copd_ifm.studies import ct_runs
from copd_ifm.studies.ct_runs import Target
from copd_ifm.studies.folder import check_report_keeps_runs
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.results import finished
from copd_ifm.studies.shortcut import plots
from copd_ifm.studies.shortcut.plan import ShortcutStudy
from copd_ifm.studies.shortcut.regions import map_runs, run_regions

ALPHA = 0.05
CLAIM = ("Robinson et al. (NeurIPS 2021) show that contrastive encoders suppress features: the easy one "
         "(colour on Trifeature) is learned and the others (shape, texture) are suppressed, and claim that "
         "implicit feature modification (IFM, ε > 0) reduces this suppression; on COPDGene they report only "
         "outcome tables (Table 2: small gains at ε ∈ {0.1, 0.2, 0.5, 1.0}). Here the CT analogue: the "
         "synthetic cohort's ground-truth latents are the features - emphysema (easy: low HU), airway wall "
         "thickness (subtle), the scanner site (a visible shortcut carrying no outcome information) and body "
         "size - and the question is whether IFM raises their linear read-out over the baseline (ε = 0).")


def primary_metric(kind: str) -> str:
    return "r2" if kind == "continuous" else "accuracy"


def collect_results(out: Path, plans: list[RunPlan], targets: list[Target], density: pd.DataFrame,
                    samples_per_dim: int, readout: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results table ``ct_runs.RESULT_COLUMNS`` under ``readout``, one row per finished run's ``result.json``)."""
    per_fold, runs = ct_runs.per_fold_results(out, plans, targets, density, samples_per_dim, readout)
    return ct_runs.fold_means(per_fold), runs


def comparisons(results: pd.DataFrame) -> pd.DataFrame:
    """IFM − baseline and baseline − untrained per (τ, ε, level, latent) on the primary metric, Holm-adjusted."""
    primary = results[results["metric"] == results["kind"].map(primary_metric)]
    rows = []
    base = primary[primary["method"] == "baseline"]
    untrained = primary[primary["method"] == "untrained"]
    for (tau, features, latent), b in base.groupby(["tau", "features", "latent"], sort=False):
        b_seed = b.set_index("seed")["value"]
        ifm = primary[(primary["method"] == "ifm") & (primary["tau"] == tau) & (primary["features"] == features)
                      & (primary["latent"] == latent)]
        for eps, i in ifm.groupby("epsilon"):
            rows.append({"comparison": f"IFM ε={eps:g} − baseline", "tau": tau, "epsilon": eps, "features": features,
                         "latent": latent, "metric": b["metric"].iloc[0],
                         **paired_difference(i.set_index("seed")["value"], b_seed)})
        u = untrained[(untrained["latent"] == latent)
                      & (untrained["features"] == ("untrained" if features == "graph" else "untrained_patch"))]
        if len(u):
            rows.append({"comparison": "baseline − untrained", "tau": tau, "epsilon": 0.0, "features": features,
                         "latent": latent, "metric": b["metric"].iloc[0],
                         **paired_difference(b_seed, u.set_index("seed")["value"])})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    family = table["comparison"].str.startswith("IFM")
    # Holm within each family of tests (IFM effects, training effects)
    table["p_holm"] = holm(table["p"], family).combine_first(holm(table["p"], ~family))
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table


def _verdict(row) -> str:
    if row.n < 2:
        return f"not tested ({row.n} seed{'s' if row.n != 1 else ''})"
    if not (row.p_holm < ALPHA):
        return "no detectable difference"
    return "higher" if row.mean > 0 else "lower"


def _conclusion(higher: int, lower: int, total: int) -> str:
    """One sentence on the paper's claim that claims no more than the tests support."""
    if total == 0:
        return ""
    if higher == 0 and lower == 0:
        return ("No IFM − baseline difference is distinguishable from seed-to-seed variation here: this study "
                "neither supports nor refutes the claim at this scale.")
    if lower == 0:
        return (f"IFM raised the read-out in {higher} comparison(s) and lowered none: consistent with the claim "
                f"for those latents and levels only.")
    if higher == 0:
        return f"IFM lowered the read-out in {lower} comparison(s) and raised none: against the claim at this scale."
    return f"Mixed: IFM raised {higher} and lowered {lower} read-outs; no overall claim follows."


def _pm(values: pd.Series, seeded: bool = True) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) < 2:
        return f"{values.iloc[0]:.3f}" + (" (1 seed)" if seeded else "")
    return f"{values.mean():.3f} ± {values.std():.3f}"


def _readout_table(results: pd.DataFrame, targets: list[Target]) -> list[str]:
    primary = results[results["metric"] == results["kind"].map(primary_metric)]
    columns: list[tuple[str, pd.Series]] = []
    for name in ("chance", "densitometry", "untrained", "untrained_patch"):
        columns.append((name, primary["features"] == name))
    trained = primary[primary["method"].isin(["baseline", "ifm"])]
    for (tau, eps, features), _ in trained.groupby(["tau", "epsilon", "features"], sort=True):
        label = f"{'baseline' if eps == 0 else f'IFM ε={eps:g}'} τ={tau:g} {features}"
        columns.append((label, (primary["tau"] == tau) & (primary["epsilon"] == eps) & (primary["features"] == features)
                        & primary["method"].isin(["baseline", "ifm"])))
    lines = ["| latent (metric) | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for t in targets:
        name = t.outcome.name
        cells = [_pm(primary[mask & (primary["latent"] == name)]["value"], label not in ("chance", "densitometry"))
                 for label, mask in columns]
        lines.append(f"| {name} ({primary_metric(t.outcome.kind)}) | " + " | ".join(cells) + " |")
    return lines


def _comparison_lines(table: pd.DataFrame) -> list[str]:
    lines = ["| comparison | τ | features | latent | n | mean a | mean b | Δ (a − b) | 95 % CI | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        ci = f"[{r.low:+.3f}, {r.high:+.3f}]" if math.isfinite(r.low) else "–"
        lines.append(f"| {r.comparison} | {r.tau:g} | {r.features} | {r.latent} ({r.metric}) | {r.n} | {r.a:.3f} | "
                     f"{r.b:.3f} | {r.mean:+.3f} | {ci} | {r.p:.3g} | {r.p_holm:.3g} | {r.verdict} |")
    return lines


def write_summary(study: ShortcutStudy, out: Path, cohort: CohortConfig, plans: list[RunPlan], targets: list[Target],
                  results: pd.DataFrame, runs: pd.DataFrame, table: pd.DataFrame, n_landmarks: int,
                  n_subjects: int, sensitivity: list[str]) -> None:
    c = study.cohort
    finished = len(runs)
    lines = [f"# CT shortcut study, scale `{study.scale}`", "", "## Claim", "", CLAIM, "",
             "## Scale and limits", "",
             f"- **Synthetic cohort** (`copd_ifm.cohort.synthetic`): {n_subjects} subjects at {c.spacing_mm:g} mm, "
             f"seed {c.seed}, nuisance strength {c.nuisance:g} (scanner differences between sites × {c.nuisance:g}); "
             f"{n_landmarks} landmarks of {c.patch_size}³ voxels. Not real CT: what holds here need not hold on "
             f"COPDGene, and the reverse.",
             f"- Runs: {finished} of {len(plans)} finished; seeds {study.seeds}; IFM ε grid "
             f"{', '.join(f'{e:g}' for e in sorted(set(study.epsilons) - {0.0})) or 'empty (no IFM runs)'} against "
             f"the baseline ε = 0; "
             f"pretrain config `{study.pretrain}` with {json.dumps(study.pretrain_overrides)}.",
             *ct_runs.training_lines(runs),
             f"- Read-out: {study.folds}-fold cross-validation (fold seed {study.fold_seed}), the same folds for every "
             f"method, R² for continuous targets and accuracy for ordinal ones; "
             f"{readout_text(study.readout, study.samples_per_dim)} "
             f"The site is read out as ordinal (its levels are ordered by noise sd).",
             "- Controls on the same folds: densitometry (%LAA-950, Perc15, lung volume from the store index), the "
             "untrained encoder of the same architecture and seed (0 training steps), and chance (training mean: "
             "R² ≤ 0; majority level: accuracy).", "",
             "## Read-out per latent and outcome", "",
             "Mean ± sd over seeds of the fold-mean score (R² or accuracy); sd only with ≥ 2 seeds (densitometry "
             "and chance do not depend on the seed).", "",
             *_readout_table(results, targets), ""]
    if not table.empty:
        ifm = table[table["comparison"].str.startswith("IFM")]
        counts = ifm["verdict"].value_counts()
        lines += ["## IFM − baseline", "",
                  f"Paired over seeds; 95 % t confidence interval; p from a paired t-test, Holm-adjusted over the "
                  f"{int(ifm['p'].notna().sum())} IFM tests below; a difference counts only at adjusted p < {ALPHA}. "
                  f"A difference that is the same in every seed leaves nothing to test against (p = nan) and is "
                  f"not counted.", "",
                  f"**Outcome: IFM higher in {counts.get('higher', 0)}, lower in {counts.get('lower', 0)}, no "
                  f"detectable difference in {counts.get('no detectable difference', 0)} and untested in "
                  f"{int(ifm['verdict'].str.startswith('not tested').sum())} of {len(ifm)} comparisons.** "
                  + _conclusion(counts.get("higher", 0), counts.get("lower", 0), len(ifm)), "",
                  *_comparison_lines(ifm), "",
                  "## Training effect (baseline − untrained encoder, same seed)", "",
                  "Negative: training lowered the read-out of that latent (suppression relative to the random "
                  "encoder).", "", *_comparison_lines(table[~table["comparison"].str.startswith("IFM")]), ""]
    lines += sensitivity
    lines += ["## Figures", "", "- `shortcut.png`: read-out per target vs ε (mean ± sd over seeds) with the "
              "control lines.",
              f"- `regions.png`: per-landmark cross-validated R² (read-out `{study.regions_readout}`, chosen for "
              f"its cost: one read-out per landmark) of `{study.regions_latent}` from that landmark's "
              "node embedding (coronal projection, mean over seeds and over landmarks along the AP axis), next to "
              "the measured share of voxels < −950 HU per landmark (the generator draws centrilobular emphysema "
              "with an upper-zone predominance).", ""]
    files.atomic_write_text(out / "summary.md", "\n".join(lines))


def sensitivity_lines(study: ShortcutStudy, results: dict[str, pd.DataFrame], targets: list[Target]) -> list[str]:
    """Per sensitivity protocol: the read-out table and the IFM − baseline verdict counts (never a choice)."""
    lines = []
    for protocol, table in results.items():
        ifm = comparisons(table)
        ifm = ifm[ifm["comparison"].str.startswith("IFM")] if not ifm.empty else ifm
        counts = ifm["verdict"].value_counts() if not ifm.empty else pd.Series(dtype=int)
        lines += [f"## Sensitivity: read-out protocol `{protocol}`", "",
                  f"The same runs and folds read out by {readout_text(protocol, study.samples_per_dim)} "
                  f"Shown to judge how much the conclusions depend on the protocol; the declared protocol above "
                  f"(`{study.readout}`) stays the result.", "",
                  f"IFM − baseline under `{protocol}` (paired over seeds, Holm over the IFM tests): higher in "
                  f"{counts.get('higher', 0)}, lower in {counts.get('lower', 0)}, no detectable difference in "
                  f"{counts.get('no detectable difference', 0)} of {len(ifm)} comparisons.", "",
                  *_readout_table(table, targets), ""]
    return lines


def write_report(study: ShortcutStudy, out: Path, cohort: CohortConfig, plans: list[RunPlan], targets: list[Target],
                 density: pd.DataFrame) -> pd.DataFrame:
    """Write every report file from the finished runs; returns the results table (declared protocol)."""
    from copd_ifm.context.train import open_store

    check_report_keeps_runs(out)
    results, runs = collect_results(out, plans, targets, density, study.samples_per_dim, study.readout)
    files.atomic_write_text(out / "results.csv", results.to_csv(index=False, float_format="%.8g"))
    table = comparisons(results)
    if not table.empty:
        files.atomic_write_text(out / "comparisons.csv", table.to_csv(index=False, float_format="%.6g"))
    others = {p: collect_results(out, plans, targets, density, study.samples_per_dim, p)[0]
              for p in study.sensitivity if p != study.readout}
    if others:
        files.atomic_write_text(out / "sensitivity.csv", pd.concat(
            [t.assign(readout=p) for p, t in others.items()]).to_csv(index=False, float_format="%.8g"))
    store = open_store(cohort)
    write_summary(study, out, cohort, plans, targets, results, runs, table, store.n_landmarks, len(targets[0].y),
                  sensitivity_lines(study, others, targets))
    plots.plot_shortcut(results, [t.outcome for t in targets], out / "shortcut.png")
    region_target = next(t for t in targets if t.is_latent and t.outcome.name == study.regions_latent)
    shown = [p for p, _ in finished(out, map_runs(plans))]
    maps = {p.run_id: run_regions(out, p, region_target, study.samples_per_dim, study.regions_readout)
            for p in shown}
    plots.plot_regions(shown, maps, store, study.regions_latent, out / "regions.png")
    return results
