"""A recipe study's report: ``results.csv``, ``summary.md`` (scale, table, IFM − baseline) and ``<study>.png``.

IFM − baseline pairs each ε run with the baseline of the same method and seed
(same initial weights and data order); with ≥ 2 seeds it is a paired t test with
a 95 % interval, Holm-adjusted over every method × ε × metric of the study, and
a difference counts only at adjusted p < 0.05. With one seed there is nothing to
test against: the report shows single runs and says so.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from copd_ifm import files  # noqa: E402
from copd_ifm.stats import holm, paired_difference  # noqa: E402
from copd_ifm.studies.grid import RunPlan  # noqa: E402
from copd_ifm.studies.results import collect_rows  # noqa: E402
from natural_images.studies.recipes import RecipeStudy  # noqa: E402

FIRST = ("run_id", "method", "epsilon", "seed", "dataset", "arch", "epochs", "train_loss")
PAPER = {"table1": "Robinson et al. (NeurIPS 2021), Table 1, ImageNet100, ResNet-50, 200 epochs, linear top-1: "
                   "MoCo-v2 80.4 ± 0.11 → IFM 81.1 ± 0.02 (ε = 0.05), 80.9 (0.1), 80.7 (0.2); AdCo 78.9 ± 0.21 "
                   "(the official README's released checkpoints: 80.5 → 81.1, 81.4, 80.9).",
         "robust": "Robinson et al. (NeurIPS 2021), Sec. 4.3 / Fig. 8: linear probes on the frozen encoder trained "
                   "on D, on its robust part D_R and its non-robust part D_NR (Ilyas et al., 2019); the paper "
                   "reports that IFM relies more on robust features than SimCLR."}
ALPHA = 0.05


def metrics(table: pd.DataFrame) -> list[str]:
    """The read-out columns: ``top1_<label>`` (table1) or D, D_R, D_NR (robust), all in %."""
    return [c for c in table.columns if c.startswith("top1_") or c in ("D", "D_R", "D_NR")]


def comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """IFM ε − baseline per method, ε and metric, paired over seeds; Holm over the whole table."""
    rows = []
    for method, part in table[table["method"] != "untrained"].groupby("method", sort=False):
        base = part[part["epsilon"] == 0].set_index("seed")
        for eps, ifm in part[part["epsilon"] > 0].groupby("epsilon"):
            for metric in metrics(table):
                rows.append({"method": method, "epsilon": eps, "metric": metric,
                             **paired_difference(ifm.set_index("seed")[metric], base[metric])})
    result = pd.DataFrame(rows)
    if not result.empty:
        result["p_holm"] = holm(result["p"])
        result["verdict"] = ["not tested (1 seed)" if r.n < 2 else
                             ("higher" if r.mean > 0 else "lower") if r.p_holm < ALPHA else "no detectable difference"
                             for r in result.itertuples()]
    return result


def _chance(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c.startswith("chance_")]
    return ", ".join(f"{c.removeprefix('chance_')} {table[c].mean():.2f} %" for c in cols) or "not recorded"


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    return f"{values.iloc[0]:.2f}" if len(values) == 1 else f"{values.mean():.2f} ± {values.std():.2f}"


def _table_lines(table: pd.DataFrame) -> list[str]:
    cols = metrics(table)
    lines = ["| method | ε | runs | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for (method, eps), part in table.groupby(["method", "epsilon"], sort=False):
        lines.append(f"| {method} | {eps:g} | {len(part)} | " + " | ".join(_cell(part[c]) for c in cols) + " |")
    return lines


def _comparison_lines(result: pd.DataFrame) -> list[str]:
    lines = ["| method | ε | metric | seeds | Δ (IFM − baseline) | 95 % CI | p | Holm p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result.itertuples():
        ci = f"{r.low:+.2f} … {r.high:+.2f}" if pd.notna(r.low) else "–"
        lines.append(f"| {r.method} | {r.epsilon:g} | {r.metric} | {r.n} | {r.mean:+.2f} | {ci} | {r.p:.3g} | "
                     f"{r.p_holm:.3g} | {r.verdict} |")
    return lines


def plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per read-out column: mean over seeds per ε, one line per method."""
    cols = metrics(table)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for method, part in table[table["method"] != "untrained"].groupby("method", sort=False):
            summary = part.groupby("epsilon")[col].agg(["mean", "std"]).reset_index()
            ax.errorbar(summary["epsilon"], summary["mean"], yerr=summary["std"].fillna(0), fmt="-o", capsize=3,
                        label=method)
        untrained = table.loc[table["method"] == "untrained", col]
        if len(untrained):
            ax.axhline(untrained.mean(), color="0.45", linestyle=":", label="untrained")
        ax.set_xlabel("IFM ε (0 = baseline)")
        ax.set_ylabel(f"{col} (%)")
        ax.set_title(col, fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(study: RecipeStudy, out: Path, plans: list[RunPlan]) -> pd.DataFrame:
    """``results.csv``, ``comparisons.csv``, ``summary.md`` and ``<study>.png`` from the finished runs."""
    table = collect_rows(out, plans, first=FIRST)
    lines = [f"# {study.study} study, scale `{study.scale}`", "", "## The paper", "", PAPER[study.study], "",
             "## Scale and limits", ""]
    if table.empty:
        files.atomic_write_text(out / "summary.md", "\n".join(lines + [f"0 of {len(plans)} runs finished.", ""]))
        return table
    files.atomic_write_text(out / "results.csv", table.to_csv(index=False, float_format="%.6g"))
    first = table.iloc[0]
    lines += [f"- {len(table)} of {len(plans)} runs finished: {', '.join(study.methods)} × ε ∈ "
              f"{{{', '.join(f'{e:g}' for e in sorted(study.epsilons))}}} × {study.seeds} seed(s); config "
              f"`{study.config}` with {study.run or 'no overrides'}; {first['arch']} on {first['dataset']}, "
              f"{int(first['epochs'])} epochs.",
              f"- Read-out: {first['readout']}." if "readout" in table.columns else
              f"- Read-out: linear probes on the frozen encoder (FGSM ε {study.robust.fgsm_eps:g}, at most "
              f"{study.robust.max_steps} steps; `natural_images/robust.py`).",
              f"- Controls: the untrained encoder of each seed (row `untrained`: the first method's architecture and "
              f"initial weights, read out alike) and chance, the majority class of the test split: "
              f"{_chance(table)}.", "", "## Read-out", "", "Mean ± sd over seeds (a single run: its value), in %.",
              "", *_table_lines(table), ""]
    result = comparisons(table)
    if not result.empty:
        files.atomic_write_text(out / "comparisons.csv", result.to_csv(index=False, float_format="%.6g"))
        lines += ["## IFM − baseline", "", __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
                  *_comparison_lines(result), ""]
    plot(table, out / f"{study.study}.png")
    files.atomic_write_text(out / "summary.md", "\n".join(lines))
    return table
