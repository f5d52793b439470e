"""Evaluation reports: the Table-2-shaped summary as Markdown and HTML, plus CSV and JSON.

Files written into the report folder (each atomically):

* ``report.md`` / ``report.html``: methods as rows, outcomes as columns
  (R² for continuous outcomes, accuracy and 1-off accuracy in % for ordinal
  ones), mean ± sample sd over folds, the best mean per column in bold; then
  the subject counts, the methods' sources, fold notes and the plots.
* ``results.csv``: one row per method × outcome × repeat × fold (columns of
  :data:`copd_ifm.evaluation.cv.RESULT_COLUMNS` plus ``repeat``).
* ``comparisons.csv`` / ``differences.csv``: the paired comparisons with the
  reference (:mod:`copd_ifm.evaluation.compare`) and their per-fold differences.
* ``sensitivity.csv``: per-fold rows of the other read-out protocols.
* ``results.json``: settings, counts, the summary and the fold rows.
* ``predictions.csv``: out-of-fold prediction of every subject, per method and
  outcome (the data behind the plots).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from copd_ifm.evaluation import compare
from copd_ifm.evaluation.cv import CHANCE, DENSITOMETRY
from copd_ifm.evaluation.outcomes import OUTCOMES, Outcome
from copd_ifm.evaluation.readout import DEFAULT_READOUT, describe
from copd_ifm.files import atomic_write_text

#: Metrics per outcome kind: (column in the results table, label, scale for display).
METRICS: dict[str, list[tuple[str, str, float]]] = {
    "continuous": [("r2", "R²", 1.0)],
    "ordinal": [("accuracy", "acc. %", 100.0), ("one_off", "1-off %", 100.0)],
}


@dataclass
class Evaluation:
    """Everything a report shows.

    ``methods``: method name → one-line description of its source, in row order.
    ``counts``: one row per outcome (columns outcome, kind, manifest,
    outcome_missing, features_missing, used, majority_level, majority_share,
    plus ``missing:<method>`` per method). ``results``/``predictions``: see
    :class:`copd_ifm.evaluation.cv.CVResult`. ``warnings``: one line per
    data-quality finding (out-of-range outcomes, subjects without features,
    skipped outcomes), shown first in the report. ``readout``: the declared
    protocol; ``sensitivity``: per-fold rows of the other protocols (column
    ``readout``); ``comparisons``/``differences``: :mod:`copd_ifm.evaluation.compare`
    with ``reference`` (None: no comparison).
    """

    cohort: str
    synthetic: str | None
    folds: int
    seed: int
    samples_per_dim: int
    outcomes: list[Outcome]
    methods: dict[str, str]
    counts: pd.DataFrame
    results: pd.DataFrame
    predictions: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    readout: str = DEFAULT_READOUT
    repeats: int = 1
    reference: str | None = None
    comparisons: pd.DataFrame | None = None
    differences: pd.DataFrame | None = None
    sensitivity: pd.DataFrame | None = None


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Fold rows → one row per method × outcome × metric.

    Columns: method, outcome, metric, mean, sd (sample sd, ddof=1, over folds),
    folds, failed (folds whose model could not be fitted), not_converged. The
    mean and sd are NaN when any fold failed: a partial mean would not compare
    like with like.
    """
    rows = []
    for (method, outcome), group in results.groupby(["method", "outcome"], sort=False):
        failed = int((group["status"] == "failed").sum())
        for metric, _, _ in METRICS[group["kind"].iloc[0]]:
            values = group[metric].to_numpy(dtype=float)
            ok = failed == 0
            rows.append({"method": method, "outcome": outcome, "metric": metric,
                         "mean": float(values.mean()) if ok else np.nan,
                         "sd": float(values.std(ddof=1)) if ok and len(values) > 1 else np.nan,
                         "folds": len(values), "failed": failed,
                         "not_converged": int((group["status"] == "not converged").sum())})
    return pd.DataFrame(rows, columns=["method", "outcome", "metric", "mean", "sd", "folds", "failed",
                                       "not_converged"])


def _columns(outcomes: list[Outcome]) -> list[tuple[Outcome, str, str, float]]:
    return [(o, metric, f"{o.name} {label}", scale) for o in outcomes for metric, label, scale in METRICS[o.kind]]


def table(summary: pd.DataFrame, outcomes: list[Outcome], methods: list[str],
          bold: tuple[str, str] = ("**", "**")) -> pd.DataFrame:
    """Summary → display table (methods × outcome metrics) of ``mean ± sd`` strings.

    ``bold``: (open, close) markup around the best mean of each column, only where it beats the
    :data:`~copd_ifm.evaluation.cv.CHANCE` row (when there is one; that row is never bold).
    ``†`` marks cells where the ordinal model did not converge in some fold;
    a method not read out on an outcome (too few subjects) shows ``skipped``.
    """
    cells = summary.set_index(["method", "outcome", "metric"])
    out = pd.DataFrame(index=methods, dtype=object)
    for outcome, metric, label, scale in _columns(outcomes):
        present = [m for m in methods if (m, outcome.name, metric) in cells.index]
        means = pd.Series({m: cells.loc[(m, outcome.name, metric), "mean"] for m in present if m != CHANCE},
                          dtype=float)
        best = means.max()
        chance = cells["mean"].get((CHANCE, outcome.name, metric), -np.inf)
        if not best > chance + 1e-12:
            best = np.nan  # nothing beats guessing the training mean / majority level: no cell is best
        column = []
        for method in methods:
            if method not in present:
                column.append("skipped")
                continue
            cell = cells.loc[(method, outcome.name, metric)]
            if cell["failed"]:
                column.append(f"failed in {int(cell['failed'])}/{int(cell['folds'])} folds")
                continue
            digits = 3 if scale == 1.0 else 1
            text = f"{cell['mean'] * scale:.{digits}f} ± {cell['sd'] * scale:.{digits}f}"
            if method != CHANCE and np.isclose(cell["mean"], best, rtol=0, atol=1e-12):
                text = f"{bold[0]}{text}{bold[1]}"
            column.append(text + (" †" if cell["not_converged"] else ""))
        out[label] = column
    out.index.name = "method"
    return out


NOISE_LEAD = ("The fold sd is the spread of one method's score over the test folds. Two means closer than it are "
              "within noise: this cohort cannot tell them apart. A paired test over folds or seeds is what could.")


def noise_lines(summary: pd.DataFrame, outcomes: list[Outcome], methods: list[str]) -> list[str]:
    """One plain sentence per table column: how far apart the runs' feature sets are against the fold sd.

    The runs' feature sets are every method but the references (densitometry, chance); with fewer than two,
    densitometry joins them. Not a test (folds share training subjects, and nothing here is paired): a spread
    below the typical fold sd is stated as within noise, and a column where nothing beats chance says so.
    """
    cells = summary.set_index(["method", "outcome", "metric"])
    runs = [m for m in methods if m not in (CHANCE, DENSITOMETRY)]
    compared = runs if len(runs) >= 2 else [m for m in methods if m != CHANCE]
    what = f"the {len(compared)} run feature sets" if compared == runs else "the methods"
    lines = []
    for outcome, metric, label, scale in _columns(outcomes):
        rows = [cells.loc[key] for key in ((m, outcome.name, metric) for m in compared) if key in cells.index]
        means = np.array([r["mean"] for r in rows], dtype=float) * scale
        sds = np.array([r["sd"] for r in rows], dtype=float) * scale
        if len(rows) < 2 or not np.isfinite(means).all():
            continue
        digits = 3 if scale == 1.0 else 1
        spread, sd = means.max() - means.min(), float(np.nanmedian(sds))
        text = f"{label}: {what} span {spread:.{digits}f} against a fold sd of {sd:.{digits}f} (median over them)"
        text += ": within noise." if spread < sd else ": more than one fold sd apart (not a paired test)."
        chance = cells["mean"].get((CHANCE, outcome.name, metric))
        everything = [cells.loc[key, "mean"] for key in ((m, outcome.name, metric) for m in methods if m != CHANCE)
                      if key in cells.index]
        if chance is not None and np.isfinite(chance) and not np.nanmax(everything) > chance + 1e-12:
            text += f" No method beats chance ({chance * scale:.{digits}f}), so none is in bold."
        lines.append(text)
    return lines


def _markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """Plain pipe table (no extra dependency)."""
    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in frame.iterrows():
        cells = ([str(key)] if index else []) + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results: pd.DataFrame) -> str:
    """Per-fold results → the summary as a Markdown table (for the terminal)."""
    outcomes = [OUTCOMES[name] for name in dict.fromkeys(results["outcome"])]
    methods = list(dict.fromkeys(results["method"]))
    return _markdown(table(summarize(results), outcomes, methods))


def _counts_table(ev: Evaluation) -> pd.DataFrame:
    counts = ev.counts.set_index("outcome")
    shown = pd.DataFrame({
        "kind": counts["kind"],
        "in manifest": counts["manifest"],
        "outcome missing": counts["outcome_missing"],
        "features missing": counts["features_missing"],
        "used": counts["used"],
        "majority level (share %)": [
            "" if pd.isna(level) else f"{level} ({share * 100:.1f})"
            for level, share in zip(counts["majority_level"], counts["majority_share"])],
    })
    shown.index.name = "outcome"
    return shown


def _notes(ev: Evaluation) -> list[str]:
    notes = []
    flagged = ev.results[(ev.results["status"] != "ok") | (ev.results["note"] != "")]
    for _, row in flagged.iterrows():
        text = f"{row['method']}, {row['outcome']}, fold {row['fold']}: {row['status']}"
        notes.append(text + (f" ({row['note']})" if row["note"] else ""))
    counts = ev.counts.set_index("outcome")
    for method in ev.methods:
        column = f"missing:{method}"
        if column in counts and counts[column].sum():
            per = ", ".join(f"{o} {int(n)}" for o, n in counts[column].items() if n)
            notes.append(f"{method}: subjects with the outcome but no features, dropped for every method: {per}")
    return notes


def _method_text(ev: Evaluation) -> list[str]:
    return [
        "Densitometry as COPDGene measures it, on the acquired image and its lung mask (not the resampled "
        "grid): %LAA-950 = share of lung voxels below −950 HU (strictly: a voxel at −950 is not counted), "
        "Perc15 = 15th percentile of lung HU (linear interpolation), lung volume = voxel count × voxel volume.",
        f"{_design(ev)}, seed {ev.seed}" + (f" (repeat r uses seed {ev.seed} + r)" if ev.repeats > 1 else "")
        + ": KFold for continuous outcomes, StratifiedKFold on the level for ordinal ones; the same folds for every "
        "method.",
        "For each outcome the subjects are those with the outcome and with features in every method; a subject "
        "missing from any feature table or with an empty or invalid outcome is dropped for that outcome only.",
        f"Per fold, fitted on the training part only, {describe(ev.readout, ev.samples_per_dim)}",
        "Continuous: R² = 1 − SS_res/SS_tot on the held-out fold, SS_tot around the held-out fold's mean (can be "
        "negative).",
        "Ordinal: ordered logit (statsmodels OrderedModel); predicted level = most probable; accuracy and 1-off "
        "accuracy (prediction within one level). A level absent from a training part cannot be predicted there.",
        f"Cells: mean ± sample sd over the {ev.repeats * ev.folds} folds; best mean per column in bold when it "
        "beats the chance row; † = the "
        "ordinal fit did not converge in some fold (result kept).",
    ]


def _design(ev: Evaluation) -> str:
    return (f"{ev.repeats} × repeated {ev.folds}-fold cross-validation" if ev.repeats > 1
            else f"{ev.folds}-fold cross-validation")


def _comparison_md(ev: Evaluation) -> list[str]:
    """The paired comparisons with the reference: verdict sentences, table, how (Markdown lines)."""
    if ev.comparisons is None or not len(ev.comparisons):
        return []
    return (["", f"## Paired comparisons with `{ev.reference}`", ""]
            + [f"- {line}" for line in compare.sentences(ev.comparisons)]
            + ["", _markdown(compare.display(ev.comparisons), index=False), "",
               compare.method_text(ev.comparisons, ev.repeats, ev.folds), "", "![differences](differences.png)"])


def _comparison_html(ev: Evaluation) -> list[str]:
    if ev.comparisons is None or not len(ev.comparisons):
        return []
    esc = html.escape
    return ([f"<h2>Paired comparisons with <code>{esc(ev.reference or '')}</code></h2><ul>"]
            + [f"<li>{esc(line)}</li>" for line in compare.sentences(ev.comparisons)] + ["</ul>",
               compare.display(ev.comparisons).to_html(index=False),
               f"<p>{esc(compare.method_text(ev.comparisons, ev.repeats, ev.folds))}</p>",
               '<p><img src="differences.png" alt="differences"></p>'])


def sensitivity_table(ev: Evaluation) -> pd.DataFrame | None:
    """Rows ``method [protocol]`` for the declared and every other protocol, same folds; no bold (not a choice)."""
    if ev.sensitivity is None or not len(ev.sensitivity):
        return None
    both = pd.concat([ev.results.assign(readout=ev.readout), ev.sensitivity], ignore_index=True)
    both["method"] = both["method"] + " [" + both["readout"] + "]"
    protocols = list(dict.fromkeys(both["readout"]))
    rows = [f"{m} [{p}]" for m in ev.methods for p in protocols]
    present = set(both["method"])
    return table(summarize(both), ev.outcomes, [r for r in rows if r in present], bold=("", ""))


def _sensitivity_lead(ev: Evaluation) -> str:
    others = ", ".join(f"`{r}`" for r in dict.fromkeys(ev.sensitivity["readout"]))
    return (f"The declared protocol `{ev.readout}` against {others} on the same features and folds: a check of how "
            f"much the numbers depend on the read-out, never a choice among them.")


def _sensitivity_md(ev: Evaluation) -> list[str]:
    shown = sensitivity_table(ev)
    if shown is None:
        return []
    return ["", "## Read-out sensitivity", "", _sensitivity_lead(ev), "", _markdown(shown)]


def _sensitivity_html(ev: Evaluation) -> list[str]:
    shown = sensitivity_table(ev)
    if shown is None:
        return []
    return ["<h2>Read-out sensitivity</h2>", f"<p>{html.escape(_sensitivity_lead(ev))}</p>",
            shown.to_html(index_names=False)]


def _json_value(value: object) -> object:
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def write_report(ev: Evaluation, out: Path, plots: list[Path]) -> dict[str, Path]:
    """Write report.md, report.html, results.csv, results.json and predictions.csv into ``out``.

    ``plots``: PNG files already in ``out``, shown in the reports. Returns the written paths by name.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(ev.results)
    title = f"COPD outcome read-out: {ev.cohort}"
    banner = (f"Synthetic cohort ({ev.synthetic}): these numbers come from generated images and phenotypes, "
              f"not from patients. They check the pipeline, not the method." if ev.synthetic else None)
    sets = len([m for m in ev.methods if m != CHANCE])
    lead = (f"Linear read-out of {sets} feature sets beside chance (no features), {_design(ev)}, read-out "
            f"protocol `{ev.readout}` (declared before the results; others only as a sensitivity check below), "
            f"mean ± sd over folds, best per column in bold where it beats chance.")
    notes = _notes(ev)
    noise = noise_lines(summary, ev.outcomes, list(ev.methods))

    md = [f"# {title}", ""]
    if banner:
        md += [f"> **{banner}**", ""]
    if ev.warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in ev.warnings] + [""]
    md += [lead, "", _markdown(table(summary, ev.outcomes, list(ev.methods))), "", "## Noise", ""]
    md += [NOISE_LEAD, ""] + [f"- {n}" for n in noise] + ["", "## Subjects", "",
           _markdown(_counts_table(ev)), "", "## Methods", ""]
    md += [f"- `{m}`: {desc}" for m, desc in ev.methods.items()]
    md += _comparison_md(ev) + _sensitivity_md(ev)
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md += ["", "## How", ""] + [f"- {t}" for t in _method_text(ev)]
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    paths = {"report.md": out / "report.md"}
    atomic_write_text(paths["report.md"], "\n".join(md) + "\n")

    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if banner:
        body.append(f'<p class="synthetic"><b>{esc(banner)}</b></p>')
    if ev.warnings:
        body += ["<h2>Warnings</h2><ul>"] + [f"<li>{esc(w)}</li>" for w in ev.warnings] + ["</ul>"]
    summary_html = table(summary, ev.outcomes, list(ev.methods), ("<b>", "</b>")).to_html(escape=False,
                                                                                          index_names=False)
    body += [f"<p>{esc(lead)}</p>", summary_html, f"<h2>Noise</h2><p>{esc(NOISE_LEAD)}</p><ul>"] + [f"<li>{esc(n)}</li>" for n in noise]
    body += ["</ul>", "<h2>Subjects</h2>", _counts_table(ev).to_html(index_names=False), "<h2>Methods</h2><ul>"]
    body += [f"<li><code>{esc(m)}</code>: {esc(d)}</li>" for m, d in ev.methods.items()] + ["</ul>"]
    body += _comparison_html(ev) + _sensitivity_html(ev)
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    body += ["<h2>How</h2><ul>"] + [f"<li>{esc(t)}</li>" for t in _method_text(ev)] + ["</ul>"]
    if plots:
        body += ["<h2>Plots</h2>"] + [f'<p><img src="{esc(p.name)}" alt="{esc(p.stem)}"></p>' for p in plots]
    style = ("body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
             ".synthetic{background:#fff3cd;padding:.6em;border:1px solid #e0c060}img{max-width:100%}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    paths["report.html"] = out / "report.html"
    atomic_write_text(paths["report.html"], page)

    paths["results.csv"] = out / "results.csv"
    atomic_write_text(paths["results.csv"], ev.results.to_csv(index=False))
    paths["predictions.csv"] = out / "predictions.csv"
    atomic_write_text(paths["predictions.csv"], ev.predictions.to_csv(index=False))
    document = {
        "cohort": ev.cohort, "synthetic": ev.synthetic, "folds": ev.folds, "seed": ev.seed,
        "samples_per_dim": ev.samples_per_dim,
        "outcomes": [{"name": o.name, "kind": o.kind, "description": o.description, "levels": list(o.levels)}
                     for o in ev.outcomes],
        "methods": ev.methods, "counts": _records(ev.counts), "summary": _records(summary),
        "folds_results": _records(ev.results), "notes": notes, "warnings": ev.warnings,
    }
    document.update(readout=ev.readout, repeats=ev.repeats, reference=ev.reference,
                    comparisons=_records(ev.comparisons) if ev.comparisons is not None else [])
    for name, frame in (("comparisons.csv", ev.comparisons), ("differences.csv", ev.differences),
                        ("sensitivity.csv", ev.sensitivity)):
        if frame is not None and len(frame):
            paths[name] = out / name
            atomic_write_text(paths[name], frame.to_csv(index=False))
    paths["results.json"] = out / "results.json"
    atomic_write_text(paths["results.json"], json.dumps(document, indent=2) + "\n")
    return paths
