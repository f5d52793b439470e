"""A study's report: ``results.csv``, ``controls.csv``, plots and a ``summary.md`` that states what it shows.

Every summary opens with the scale and its limits (runs, encoder, images,
epochs, final InfoNCE against its chance value ln(2N − 1), read-out chance
and the untrained-encoder control) and a verdict: whether the encoders left
the chance regime at all, and which features training moved above the
untrained encoders (Welch test: one mean per seed against every untrained
initialisation). Means carry ± sd only with ≥ 2 seeds. IFM −
baseline is a paired difference over seeds with a 95 % t interval and a
Holm-adjusted p over the study's cells; a cell counts as improved (or worse)
only when that adjusted p is below 5 %, and only on a feature that training
moved above the untrained encoder (on any other, the read-out is that of a
random network and a difference says nothing about suppression). A difficulty
sweep's one-way ANOVAs (per swept field and feature) are Holm-adjusted together.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.stats import holm, paired_difference, welch_difference
from natural_images import study_plots
from natural_images.config import LinearConfig
from natural_images.studies.config import StudyConfig, data_size
from copd_ifm.studies.grid import fmt
from copd_ifm.studies.results import collect_rows
from natural_images.studies.plan import plan_controls, plan_runs

LOSS_NEAR_CHANCE = 0.95      # a mean final InfoNCE above this share of ln(2N − 1) counts as "at chance"
ALPHA = 0.05
#: The leading columns of ``results.csv`` / ``controls.csv`` (a run's ``result.json`` keys, then accuracies).
RESULT_COLUMNS = ("run_id", "seed", "dataset", "temperature", "hcl_beta", "tau_plus", "ifm_eps", "ifm_alpha",
                  "epochs", "arch", "width", "stem", "image_size", "train_images", "train_loss", "final_loss",
                  "loss_pairs", "chance_loss", "wall_s")


def collect_results(study: StudyConfig, out: Path, controls: bool = False) -> pd.DataFrame:
    """Rows of every planned run (``controls``: every control) that finished, in plan order; a run whose
    folder is gone keeps its row of ``results.csv`` (``controls.csv``)."""
    plans = plan_controls(study) if controls else plan_runs(study)
    return collect_rows(out, plans, out / ("controls.csv" if controls else "results.csv"), RESULT_COLUMNS)


def study_features(table: pd.DataFrame) -> list[str]:
    return [c.removeprefix("acc_") for c in table.columns if c.startswith("acc_")]


def aggregate(study: StudyConfig, out: str | Path) -> pd.DataFrame:
    """``results.csv``, ``controls.csv``, the study's plot(s) and ``summary.md`` from the finished runs."""
    out = Path(out)
    table = collect_results(study, out)
    controls = collect_results(study, out, controls=True)
    planned = len(plan_runs(study))
    if table.empty:
        files.atomic_write_text(out / "summary.md", f"# {study.study} study\n\n0 of {planned} runs finished.\n")
        return table
    files.atomic_write_text(out / "results.csv", table.to_csv(index=False, float_format="%.6g"))
    if not controls.empty:
        files.atomic_write_text(out / "controls.csv", controls.to_csv(index=False, float_format="%.6g"))
    features = study_features(table)
    refs = references(table, controls, features)
    lines = [f"# {study.study} study: {study.dataset}, scale {study.scale}", ""]
    opening, learned = scale_and_limits(study, table, controls, features, planned)
    lines += opening
    if study.study == "difficulty":
        study_plots.plot_difficulty(table, features, study.beta_temperature, out / "difficulty.png", refs)
        lines += _difficulty_summary(table, features, study.beta_temperature)
    elif study.study == "ifm":
        study_plots.plot_ifm(table, features, out / "ifm.png", refs)
        lines += _ifm_summary(table, features, study.dataset, learned)
        files.atomic_write_text(out / "ifm_table.csv", study_plots.ifm_table(table, features).to_csv(
            index=False, float_format="%.4g"))
    else:
        study_plots.plot_correlation(table, features, out / "correlation.png", refs=refs)
        corr = study_plots.correlation_table(table, features)
        files.atomic_write_text(out / "correlation.csv", corr.to_csv(index=False, float_format="%.4g"))
        lines += _correlation_summary(corr, len(table))
    files.atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return table


def references(table: pd.DataFrame, controls: pd.DataFrame, features: list[str]) -> study_plots.References:
    """Chance read-out and InfoNCE (from the runs' ``chance_*`` columns) and the controls' mean and range."""
    refs = study_plots.References()
    for f in features:
        if f"chance_{f}" in table.columns:
            refs.chance[f] = float(table[f"chance_{f}"].mean())
        if f"acc_{f}" in controls.columns:
            refs.control[f] = float(controls[f"acc_{f}"].mean())
            refs.control_range[f] = (float(controls[f"acc_{f}"].min()), float(controls[f"acc_{f}"].max()))
    if "chance_loss" in table.columns:
        refs.chance_loss = float(table["chance_loss"].mean())
    return refs


def _pm(mean: float, sd: float, n: int) -> str:
    """``mean ± sd`` with ≥ 2 seeds, else the mean alone (one seed has no spread)."""
    return f"{mean:.1f} ± {sd:.1f}" if n >= 2 and np.isfinite(sd) else f"{mean:.1f}"


def _first(table: pd.DataFrame, column: str, default: Any = "?") -> Any:
    return table[column].iloc[0] if column in table.columns else default


def scale_and_limits(study: StudyConfig, table: pd.DataFrame, controls: pd.DataFrame, features: list[str],
                     planned: int) -> tuple[list[str], list[str] | None]:
    """The opening section: what was run, how far training got, and whether the read-outs beat an untrained net.

    Returns the lines and the features training moved above the untrained encoder: none when the final
    InfoNCE is at chance, ``None`` when unknown (no control, or fewer than 2 seeds or 2 controls).
    """
    run = study.run
    model = run.get("model", {})
    width = float(_first(table, "width", model.get("width", 1.0)))
    lines = ["## Scale and limits", "",
             f"- Runs: {len(table)} of {planned} runs finished ({study.seeds} seed(s) per setting); "
             f"{len(controls)} untrained-encoder control(s).",
             f"- Encoder: SimCLR {_first(table, 'arch', model.get('arch', 'resnet18'))}, width {width:g}, "
             f"{_first(table, 'stem', model.get('stem', 'auto'))} stem, {data_size(study)}-px images, "
             + (f"{_first(table, 'train_images')} training images, " if "train_images" in table.columns else "")
             + f"{run.get('epochs', '?')} epochs, batch {run.get('batch_size', '?')}.",
             _readout_line(run.get("linear", {}))]
    near_chance = None
    if "chance_loss" in table.columns and table["final_loss"].notna().any():
        loss, chance = table["final_loss"], float(table["chance_loss"].mean())
        near_chance = loss.mean() >= LOSS_NEAR_CHANCE * chance
        ctrl = (f"; untrained encoder {controls['final_loss'].mean():.2f}"
                if "final_loss" in controls.columns else "")
        lines.append(f"- Final InfoNCE (plain, each run's τ, {int(_first(table, 'loss_pairs'))} pairs per batch): "
                     f"{loss.min():.2f}–{loss.max():.2f} (mean {loss.mean():.2f}) vs ln(2N − 1) = {chance:.2f} "
                     f"at chance{ctrl}.")
    chance = {f: table[f"chance_{f}"].mean() for f in features if f"chance_{f}" in table.columns}
    if chance:
        lines.append("- Read-out chance (always the most frequent class): "
                     + ", ".join(f"{f} {v:.1f} %" for f, v in chance.items()) + ".")
    above: list[str] = []
    if controls.empty:
        why = "none has finished yet" if study.control else "study.control: false"
        lines.append(f"- No untrained-encoder control ({why}): read-outs cannot be told apart from what a random "
                     f"network gives.")
    else:
        seeds = (f", seeds {controls['seed'].min()}–{controls['seed'].max()}" if "seed" in controls.columns else "")
        lines.append(f"- Untrained-encoder control (same architecture, {len(controls)} random initialisation(s)"
                     f"{seeds}, same linear read-out): "
                     + ", ".join(f"{f} {_pm(controls[f'acc_{f}'].mean(), controls[f'acc_{f}'].std(), len(controls))} %"
                                 for f in features if f"acc_{f}" in controls.columns) + ".")
        tests = {f: versus_control(table, controls, f) for f in features if f"acc_{f}" in controls.columns}
        above = [f for f, d in tests.items() if d["mean"] > 0 and d["p"] < ALPHA]
        testable = bool(tests) and all(d["n"] >= 2 and d["n_b"] >= 2 for d in tests.values())
        n = max((d["n"] for d in tests.values()), default=0)
        lines.append(f"- Trained runs vs control (Welch t test, {ALPHA:.0%}: each seed's mean over its runs, {n} "
                     f"seed(s), against the {len(controls)} untrained encoders; 95 % interval): "
                     + ", ".join(f"{f} {d['mean']:+.1f} points "
                                 + (f"[{d['low']:+.1f}, {d['high']:+.1f}], p = {d['p']:.2g}" if np.isfinite(d["p"])
                                    else "(untestable)")
                                 for f, d in tests.items()) + ".")
        if testable:
            lines += ["", _verdict(near_chance, above, features, False), ""]
            return lines, [] if near_chance else above
    lines += ["", _verdict(near_chance, above, features, True), ""]
    return lines, [] if near_chance else None


def versus_control(table: pd.DataFrame, controls: pd.DataFrame, feature: str) -> dict[str, float]:
    """Trained − untrained read-out of ``feature`` (points): :func:`welch_difference` of the seeds' means
    against every untrained encoder.

    Each seed's trained value is the mean over its runs, which share that seed's initial weights, so seeds
    (not runs) are the replicates. The untrained side is every control: more initialisations than seeds pin
    down a floor that varies more between initialisations than trained read-outs do. A trained seed and its
    own control share weights at the start; any positive correlation that leaves makes this test
    conservative, not liberal.
    """
    trained = table.groupby("seed")[f"acc_{feature}"].mean()
    return welch_difference(trained, controls[f"acc_{feature}"])


def _readout_line(linear: dict[str, Any]) -> str:
    """How the read-outs were measured: cached or augmented, the probe's epochs, whether features were z-scored."""
    lin = cfg.from_dict(LinearConfig, linear, "run.linear")
    if lin.augment:
        return (f"- Read-out: one linear classifier per feature trained on {lin.readout}, {lin.epochs} epochs on "
                f"the training split, accuracy on the held-out test split.")
    scaled = "z-scored (training split's mean and sd)" if lin.standardize else "raw"
    return (f"- Read-out: one linear classifier per feature on frozen, {scaled} encoder features cached once "
            f"(eval transform, no augmentation), {lin.epochs} epochs on the training split, accuracy on the "
            f"held-out test split.")


def _verdict(near_chance: bool | None, above: list[str], features: list[str], no_control: bool) -> str:
    """``no_control``: no control, or too few runs to compare with it."""
    rest = [f for f in features if f not in above]
    if near_chance or (not no_control and not above):
        why = ("the final InfoNCE is within 5 % of its chance value" if near_chance else
               "no feature is read out better than from the untrained encoder")
        return (f"**Verdict: smoke test only.** The encoders have not left the chance regime ({why}); nothing "
                f"below is evidence for or against the paper's claims.")
    if no_control:
        return ("**Verdict:** without an untrained control (or with fewer than 2 seeds or 2 controls) it is unknown "
                "which features training has improved.")
    tail = f"; {', '.join(rest)} is not read out better than from the untrained encoder, so comparisons on it say nothing" if rest else ""
    return f"**Verdict:** training moved {', '.join(above)} above the untrained encoder{tail}."


UNTESTABLE = "untestable (< 2 paired seeds)"
UNLEARNED = "feature not learned (not above the untrained encoder)"


def _ifm_summary(table: pd.DataFrame, features: list[str], dataset: str, learned: list[str] | None) -> list[str]:
    """``learned``: the features training moved above the untrained encoder (``None``: unknown, all tested)."""
    summary = study_plots.ifm_table(table, features)
    claim = ("Paper (Fig. 6, ResNet-18, 200 epochs, 3 seeds): IFM (ε = 0.1) improves colour, shape and texture "
             "read-out at every τ." if dataset == "trifeature" else
             "The paper's IFM-vs-baseline bars (Fig. 6) are for Trifeature; this dataset has no published counterpart.")
    spread = "mean ± sd over seeds" if summary["n"].min() >= 2 else "mean (one seed: no spread)"
    lines = [claim, "", f"Linear read-out accuracy (%), {spread}:", "",
             "| τ | ε | n | " + " | ".join(features) + " |", "|---" * (len(features) + 3) + "|"]
    lines += [f"| {fmt(float(r['temperature']))} | {fmt(float(r['ifm_eps']))} | {int(r['n'])} | "
              + " | ".join(_pm(r[f"acc_{f}_mean"], r[f"acc_{f}_sd"], int(r["n"])) for f in features) + " |"
              for _, r in summary.iterrows()]
    cells = ifm_cells(table, features, learned)
    if cells.empty:
        return lines
    counts = cells["verdict"].value_counts()
    lines += ["", "IFM − baseline per cell (points; paired over seeds, 95 % t interval, p of the paired t test and "
                  "Holm-adjusted over the cells of learned features; a cell counts as better or worse only at an "
                  f"adjusted p < {ALPHA:g}, and a difference identical in every seed (p = nan) never counts):", "",
              "| τ | ε | feature | IFM − baseline | 95 % CI | p | p (Holm) | n | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {fmt(float(r.temperature))} | {fmt(float(r.ifm_eps))} | {r.feature} | {r.mean:+.1f} | "
              + (f"[{r.low:+.1f}, {r.high:+.1f}]" if np.isfinite(r.low) else "–")
              + f" | {r.p:.2g} | {r.p_holm:.2g} | {r.n} | {r.verdict} |" for r in cells.itertuples()]
    lines += ["", f"Of {len(cells)} (τ, ε, feature) cells: IFM better in {counts.get('better', 0)}, worse in "
                  f"{counts.get('worse', 0)}, no detectable difference in {counts.get('no detectable difference', 0)}, "
                  f"untestable in {counts.get(UNTESTABLE, 0)}, on a feature not learned in {counts.get(UNLEARNED, 0)}."]
    return lines


def ifm_cells(table: pd.DataFrame, features: list[str], learned: list[str] | None) -> pd.DataFrame:
    """IFM − baseline per (τ, ε, feature), paired over seeds, with Holm-adjusted p and a verdict per cell.

    The Holm family is the cells with a finite p on features in ``learned`` (every feature when ``None``).
    """
    rows = []
    for tau, group in table.groupby("temperature"):
        base = group[group["ifm_eps"] == 0].set_index("seed")
        if base.empty:
            continue
        for eps, ifm in group[group["ifm_eps"] > 0].groupby("ifm_eps"):
            for f in features:
                d = paired_difference(ifm.set_index("seed")[f"acc_{f}"], base[f"acc_{f}"])
                rows.append({"temperature": tau, "ifm_eps": eps, "feature": f, **d})
    cells = pd.DataFrame(rows, columns=["temperature", "ifm_eps", "feature", "n", "a", "b", "mean", "sd", "low",
                                        "high", "p"])
    cells = cells.astype({"n": int, "p": float})
    interpretable = cells["feature"].isin(features if learned is None else learned)
    cells["p_holm"] = holm(cells["p"], interpretable)
    significant = cells["p_holm"] < ALPHA
    cells["verdict"] = np.select(
        [cells["n"] < 2, ~interpretable, significant & (cells["mean"] > 0), significant & (cells["mean"] < 0)],
        [UNTESTABLE, UNLEARNED, "better", "worse"], "no detectable difference")
    return cells


def _difficulty_summary(table: pd.DataFrame, features: list[str], beta_tau: float) -> list[str]:
    """Tables per sweep (τ at β = 0, β at ``beta_tau``) and a one-way ANOVA per (sweep, feature), Holm over
    all of them."""
    acc = [f"acc_{f}" for f in features]
    base = table[table["ifm_eps"] == 0]
    sweeps = [(key, rows, title) for key, rows, title in
              (("temperature", base[base["hcl_beta"] == 0], "τ (β = 0)"),
               ("hcl_beta", base[(base["temperature"] - beta_tau).abs() < 1e-12], f"β (τ = {beta_tau:g})"))
              if not rows.empty]
    tests = {key: sweep_anova(rows, key, features) for key, rows, _ in sweeps}
    raw = {(key, f): p for key, ps in tests.items() for f, p in (ps or {}).items()}
    adjusted = holm(pd.Series(raw, dtype=float)) if raw else pd.Series(dtype=float)
    lines = ["Paper (Fig. 3): large τ / small β favours colour; small τ / large β favours texture and shape "
             "at colour's expense.", ""]
    for key, rows, title in sweeps:
        summary = study_plots.mean_sd(rows, [key], acc)
        spread = "mean ± sd over seeds" if summary["n"].min() >= 2 else "mean (one seed: no spread)"
        lines += [f"Read-out accuracy (%) vs {title}, {spread}:", "",
                  "| " + key + " | " + " | ".join(features) + " |", "|---" * (len(features) + 1) + "|"]
        lines += ["| " + fmt(float(r[key])) + " | "
                  + " | ".join(_pm(r[f"{a}_mean"], r[f"{a}_sd"], int(r["n"])) for a in acc) + " |"
                  for _, r in summary.iterrows()]
        best = {f: fmt(float(summary.loc[summary[f"acc_{f}_mean"].idxmax(), key])) for f in features}
        lines += ["", "Best " + key + " per feature (highest mean; a finding only where the test below says yes): "
                  + ", ".join(f"{f} {v}" for f, v in best.items()) + "."]
        if tests[key] is None:
            lines += [f"Whether {key} matters at all is untestable with one seed per value: the best values above "
                      f"may be noise.", ""]
            continue
        parts = [f"{f} p = {raw[key, f]:.2g} (Holm {adjusted[key, f]:.2g}, "
                 f"{'yes' if adjusted[key, f] < ALPHA else 'no'})" if np.isfinite(raw[key, f])
                 else f"{f} untestable (the same accuracies in every seed)" for f in features]
        lines += [f"Does {key} change the accuracy (one-way ANOVA over seeds; Holm over the "
                  f"{int(adjusted.notna().sum())} testable ANOVAs of this study, {ALPHA:.0%})? "
                  + ", ".join(parts) + ".", ""]
    return lines


def sweep_anova(rows: pd.DataFrame, key: str, features: list[str]) -> dict[str, float] | None:
    """Per feature, the p of a one-way ANOVA of accuracy over the values of ``key`` (seeds as replicates);
    ``None`` when some value has fewer than 2 seeds. No spread within any value: p is 1 when every value has
    the same mean, else NaN (nothing to test, as for an IFM difference identical in every seed)."""
    groups = [g for _, g in rows.groupby(key)]
    if len(groups) < 2 or min(len(g) for g in groups) < 2:
        return None
    out = {}
    for f in features:
        if not any(g[f"acc_{f}"].std() > 0 for g in groups):
            out[f] = 1.0 if rows.groupby(key)[f"acc_{f}"].mean().nunique() == 1 else np.nan
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f] = float(stats.f_oneway(*[g[f"acc_{f}"] for g in groups]).pvalue)
    return out


def _correlation_summary(corr: pd.DataFrame, n: int) -> list[str]:
    lines = ["Paper (Fig. 2): lower InfoNCE loss goes with lower colour / digit error but higher shape, "
             "texture / object error (33 Trifeature and 7 STL-digits encoders).", "",
             f"Pearson correlations over {n} encoders (95 % CI by Fisher z; a correlation is called shown only "
             f"when its interval excludes zero):", "",
             "| x | y | r | 95 % CI | p | n | shown |", "|---|---|---|---|---|---|---|"]
    for _, r in corr.iterrows():
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if np.isfinite(r["ci_low"]) else "–"
        shown = "yes" if np.isfinite(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0) else "no"
        lines.append(f"| {r['x']} | {r['y']} | {r['pearson_r']:.2f} | {ci} | {r['p_value']:.3g} | {int(r['n'])} "
                     f"| {shown} |")
    return lines
