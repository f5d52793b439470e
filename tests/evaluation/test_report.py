"""``copd-ifm evaluate`` end to end on a tiny hand-made cohort: every output, counts, bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from copd_ifm import cli
from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.evaluation import evaluate as evaluate_module
from copd_ifm.evaluation.evaluate import evaluate
from copd_ifm.evaluation.features import write_features

N = 36


@pytest.fixture
def cohort_dir(tmp_path, monkeypatch):
    """Manifest (sid 'S007' without FEV1pp), a run folder with graph_/patch_ sets (no 'S011'),
    densitometry served in place of the patch store, and a synthetic-cohort YAML."""
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    sids = [f"S{i:03d}" for i in range(N)]
    severity = rng.uniform(0, 1, N)
    manifest = pd.DataFrame({
        "sid": sids, "image": [f"images/{s}.nii.gz" for s in sids],
        "FEV1pp_utah": 100 * np.exp(-severity + rng.normal(0, 0.1, N)),
        "FEV1_FVC_utah": 0.8 * np.exp(-0.5 * severity + rng.normal(0, 0.05, N)),
        "finalGold": 0,
        "Emph_Severity": np.clip(np.round(5 * severity + rng.normal(0, 0.6, N)), 0, 5),
        "Emph_Paraseptal": np.clip(np.round(2 * severity + rng.normal(0, 0.5, N)), 0, 2),
        "MMRCDyspneaScor": np.clip(np.round(4 * severity + rng.normal(0, 1.0, N)), 0, 4),
    })
    manifest.loc[7, "FEV1pp_utah"] = np.nan
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    graph = np.c_[severity + rng.normal(0, 0.2, N), rng.normal(size=(N, 5))]
    features = pd.DataFrame({"sid": sids, **{f"graph_f{i}": graph[:, i] for i in range(6)},
                             **{f"patch_f{i}": rng.normal(size=N) for i in range(4)}}).drop(index=11)
    write_features(tmp_path / "run" / "features.parquet", features, {"run": "toy", "config_hash": "feedc0de"})
    densitometry = pd.DataFrame({"sid": sids, "laa950_pct": 20 * severity + rng.normal(0, 2, N),
                                 "perc15_hu": -910 - 40 * severity, "lung_volume_l": rng.normal(5.5, 0.8, N)})
    monkeypatch.setattr(evaluate_module, "load_densitometry", lambda cohort: densitometry)
    (tmp_path / "toy.yaml").write_text("name: toy\nmanifest: manifest.csv\nsynthetic:\n  n: 36\n  seed: 0\n", encoding="utf-8")
    return tmp_path


@pytest.mark.slow
def test_cli_evaluate_writes_every_output(cohort_dir, capsys):
    out = cohort_dir / "report"
    rc = cli.main(["evaluate", "--cohort", str(cohort_dir / "toy.yaml"), "--features", str(cohort_dir / "run"),
                   "--folds", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| densitometry |" in printed and f"report: {out / 'report.md'}" in printed
    for name in ["report.md", "report.html", "results.csv", "results.json", "predictions.csv", "metrics.png",
                 "pred_vs_obs_logFEV1pp.png", "pred_vs_obs_logFEV1FVC.png", "confusion_CLE.png",
                 "confusion_Paraseptal.png", "confusion_mMRC.png"]:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    results = pd.read_csv(out / "results.csv")
    assert len(results[results["method"] != "chance"]) == 3 * 5 * 3  # methods × outcomes × folds
    assert len(results[results["method"] == "chance"]) == 5 * 3    # the no-feature baseline on the same folds
    assert set(results["method"]) == {"densitometry", "toy/graph", "toy/patch", "chance"}
    assert (results["status"] != "failed").all()

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Synthetic cohort" in report and "not from patients" in report
    how = report[report.index("## How"):]
    assert "below −950 HU" in how and "15th percentile" in how and "acquired image" in how
    assert "Synthetic cohort" in (out / "report.html").read_text(encoding="utf-8")
    # 36 subjects: logFEV1pp drops S007 (outcome) and S011 (features); the others drop S011 only
    assert "| logFEV1pp | continuous | 36 | 1 | 1 | 34 |" in report
    assert "| CLE | ordinal | 36 | 0 | 1 | 35 |" in report

    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    summary = pd.DataFrame(document["summary"]).set_index(["method", "outcome", "metric"])
    fev = results[(results["method"] == "densitometry") & (results["outcome"] == "logFEV1pp")]["r2"]
    assert summary.loc[("densitometry", "logFEV1pp", "r2"), "mean"] == pytest.approx(fev.mean())
    assert summary.loc[("densitometry", "logFEV1pp", "r2"), "sd"] == pytest.approx(fev.std(ddof=1))
    best = summary.xs(("logFEV1pp", "r2"), level=("outcome", "metric"))["mean"].drop("chance").idxmax()
    row = next(line for line in report.splitlines() if line.startswith(f"| {best} |"))
    assert row.split("|")[2].strip().startswith("**")  # best of the column in bold


def test_evaluate_on_real_cohort_has_no_synthetic_banner(cohort_dir):
    cohort = resolve_cohort(str(cohort_dir / "manifest.csv"))
    densitometry = evaluate_module.load_densitometry(cohort)
    results = evaluate(cohort, [], ["logFEV1FVC"], folds=3, out=cohort_dir / "r", densitometry=densitometry)
    assert list(results["method"].unique()) == ["densitometry", "chance"]
    assert "Synthetic" not in (cohort_dir / "r" / "report.md").read_text(encoding="utf-8")


def test_cli_bad_input_is_one_line(cohort_dir, capsys):
    args = ["evaluate", "--cohort", str(cohort_dir / "toy.yaml"), "--out", str(cohort_dir / "r")]
    assert cli.main([*args, "--features", str(cohort_dir / "run"), "--outcomes", "FEV1"]) == 2
    assert "valid: logFEV1pp, logFEV1FVC, CLE, Paraseptal, mMRC" in capsys.readouterr().err
    (cohort_dir / "untrained").mkdir()
    assert cli.main([*args, "--features", str(cohort_dir / "untrained")]) == 2
    err = capsys.readouterr().err
    assert "copd-ifm extract --run" in err and "Traceback" not in err
    assert cli.main([*args, "--features", str(cohort_dir / "run"), "--folds", "40"]) == 2
    assert "fewer than --folds 40" in capsys.readouterr().err


def test_summary_and_table_mark_best_failed_and_unconverged():
    from copd_ifm.evaluation.outcomes import OUTCOMES
    from copd_ifm.evaluation.report import summarize, table

    rows = []
    for method, accs, statuses in [("a", [0.5, 0.6, 0.7], ["ok", "not converged", "ok"]),
                                   ("b", [0.4, 0.5, 0.45], ["ok"] * 3),
                                   ("c", [0.9, np.nan, 0.9], ["ok", "failed", "ok"])]:
        for fold, (acc, status) in enumerate(zip(accs, statuses)):
            rows.append({"method": method, "outcome": "CLE", "kind": "ordinal", "fold": fold, "r2": np.nan,
                         "accuracy": acc, "one_off": min(1.0, acc + 0.3), "status": status, "note": ""})
    summary = summarize(pd.DataFrame(rows)).set_index(["method", "metric"])
    assert summary.loc[("a", "accuracy"), "mean"] == pytest.approx(0.6)
    assert summary.loc[("a", "accuracy"), "sd"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    assert np.isnan(summary.loc[("c", "accuracy"), "mean"])  # a failed fold: no partial mean

    shown = table(summary.reset_index(), [OUTCOMES["CLE"]], ["a", "b", "c"])
    assert shown.loc["a", "CLE acc. %"] == "**60.0 ± 10.0** †"
    assert shown.loc["b", "CLE acc. %"] == "45.0 ± 5.0"
    assert shown.loc["c", "CLE acc. %"] == "failed in 1/3 folds"


def test_chance_rows_match_a_hand_computation():
    from copd_ifm.evaluation.cv import chance_folds
    from copd_ifm.evaluation.outcomes import OUTCOMES

    sids = [f"S{i}" for i in range(6)]
    folds = pd.Series([0, 0, 0, 1, 1, 1], index=sids)
    levels = pd.Series([0, 0, 2, 1, 1, 3], index=sids, dtype=float)
    rows = chance_folds(levels, folds, OUTCOMES["CLE"]).set_index("fold")
    # fold 0 trains on 1, 1, 3 → guesses 1: accuracy 0/3, 1-off 3/3; fold 1 trains on 0, 0, 2 → guesses 0: 0/3, 2/3
    assert list(rows["accuracy"]) == [0.0, 0.0] and list(rows["one_off"]) == pytest.approx([1.0, 2 / 3])
    values = pd.Series([1.0, 2.0, 3.0, 5.0, 7.0, 9.0], index=sids)
    rows = chance_folds(values, folds, OUTCOMES["logFEV1pp"]).set_index("fold")
    # fold 0 predicted by 7: 1 − (36 + 25 + 16)/2; fold 1 by 2: 1 − (9 + 25 + 49)/8
    assert list(rows["r2"]) == pytest.approx([1 - 77 / 2, 1 - 83 / 8])


def test_no_cell_is_bold_unless_it_beats_chance_and_noise_is_stated():
    from copd_ifm.evaluation.outcomes import OUTCOMES
    from copd_ifm.evaluation.report import noise_lines, table

    rows = []
    for method, acc, r2 in (("a", 0.55, 0.10), ("b", 0.60, 0.12), ("chance", 0.625, -0.05)):
        rows += [{"method": method, "outcome": "Paraseptal", "metric": "accuracy", "mean": acc, "sd": 0.1},
                 {"method": method, "outcome": "Paraseptal", "metric": "one_off", "mean": 0.9, "sd": 0.05},
                 {"method": method, "outcome": "logFEV1pp", "metric": "r2", "mean": r2, "sd": 0.2}]
    summary = pd.DataFrame(rows).assign(folds=5, failed=0, not_converged=0)
    outcomes = [OUTCOMES["logFEV1pp"], OUTCOMES["Paraseptal"]]
    shown = table(summary, outcomes, ["a", "b", "chance"])
    assert shown.loc["b", "logFEV1pp R²"] == "**0.120 ± 0.200**"      # beats chance (−0.05): bold
    assert "**" not in "".join(shown["Paraseptal acc. %"])            # 60 % < 62.5 % of the majority guess
    assert "**" not in "".join(shown["Paraseptal 1-off %"])           # a tie with chance is no win
    lines = noise_lines(summary, outcomes, ["a", "b", "chance"])
    assert lines[0] == ("logFEV1pp R²: the 2 run feature sets span 0.020 against a fold sd of 0.200 (median over "
                        "them): within noise.")
    assert lines[1].startswith("Paraseptal acc. %: the 2 run feature sets span 5.0 against a fold sd of 10.0")
    assert lines[1].endswith("No method beats chance (62.5), so none is in bold.")


def test_confusion_panels_share_one_colour_scale(tmp_path, monkeypatch):
    from copd_ifm.evaluation import plots
    from copd_ifm.evaluation.outcomes import OUTCOMES

    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.setdefault("fig", fig) and path)
    observed = [0, 0, 0, 0, 1, 2]
    frame = pd.concat([pd.DataFrame({"method": m, "outcome": "Paraseptal", "observed": observed, "predicted": pred})
                       for m, pred in (("a", [0, 0, 0, 0, 0, 0]), ("b", [0, 1, 2, 1, 1, 2]))])
    plots.plot_confusion(frame, OUTCOMES["Paraseptal"], ["a", "b"], tmp_path / "c.png")
    images = [ax.images[0] for ax in captured["fig"].axes if ax.images]
    assert [im.get_clim() for im in images] == [(0, 4), (0, 4)]     # a's largest cell (4) sets both scales
