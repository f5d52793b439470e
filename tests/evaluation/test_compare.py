"""Paired comparisons with a reference: pairing, corrected t, Holm, the adjusted interval and the verdicts,
recomputed by hand; then ``evaluate --reference --repeats`` end to end."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from copd_ifm import cli
from copd_ifm.evaluation import compare

from tests.evaluation.test_report import cohort_dir  # noqa: F401  (the tiny cohort fixture)


def _results(rng: np.random.Generator) -> pd.DataFrame:
    """2 repeats × 5 folds; 'ref', 'good' (ref + 0.1), 'noise' (ref + noise) on a continuous and an ordinal
    outcome. Rows are shuffled: pairing must use (repeat, fold), not the order."""
    rows = []
    for outcome, kind, metric in (("logFEV1pp", "continuous", "r2"), ("CLE", "ordinal", "accuracy")):
        for repeat in range(2):
            for fold in range(5):
                base = rng.uniform(0.3, 0.6)
                for method, value in (("ref", base), ("good", base + 0.1 + rng.normal(0, 0.01)),
                                      ("noise", base + rng.normal(0, 0.05))):
                    rows.append({"method": method, "outcome": outcome, "kind": kind, "fold": fold, "repeat": repeat,
                                 "n_train": 40, "n_test": 10, "r2": value if metric == "r2" else np.nan,
                                 "accuracy": value if metric == "accuracy" else np.nan, "status": "ok"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)


def test_comparisons_equal_hand_computation():
    results = _results(np.random.default_rng(0))
    diffs = compare.fold_differences(results, "ref")
    table = compare.compare(diffs, "ref").set_index(["outcome", "method"])
    assert len(table) == 4 and (table["folds"] == 10).all()

    hand = {}
    for (outcome, method), row in table.iterrows():
        metric = "r2" if outcome == "logFEV1pp" else "accuracy"
        pivot = results[results["outcome"] == outcome].pivot_table(index=["repeat", "fold"], columns="method",
                                                                   values=metric)
        d = (pivot[method] - pivot["ref"]).to_numpy()
        se = d.std(ddof=1) * math.sqrt(1 / 10 + 10 / 40)
        p = 2 * stats.t.sf(abs(d.mean() / se), 9)
        hand[(outcome, method)] = p
        assert row["mean"] == pytest.approx(d.mean())
        assert row["p"] == pytest.approx(p)
        q = stats.t.ppf(0.975, 9)
        assert (row["low"], row["high"]) == pytest.approx((d.mean() - q * se, d.mean() + q * se))
        q4 = stats.t.ppf(1 - 0.05 / 8, 9)  # Bonferroni over the 4 tests, two-sided
        assert (row["adj_low"], row["adj_high"]) == pytest.approx((d.mean() - q4 * se, d.mean() + q4 * se))
        assert row["mde"] == pytest.approx((q4 + stats.t.ppf(0.8, 9)) * se)

    # Holm by hand: sort, multiply by (m − rank), running maximum, cap at 1
    order = sorted(hand, key=hand.get)
    running = 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * hand[key]))
        assert table.loc[key, "p_holm"] == pytest.approx(running)

    assert (table.xs("good", level="method")["verdict"] == "better").all()
    for _, row in table.iterrows():
        assert (row["verdict"] == "better") == (row["adj_low"] > 0)
        if row["verdict"] == "better":
            assert row["p_holm"] < 0.05
    lines = compare.sentences(compare.compare(diffs, "ref"))
    assert len(lines) == 2 and all("`good`" in line and "an improvement" in line for line in lines)
    assert all("`noise`" in line.split("an improvement")[-1] or "`noise`" in line for line in lines)


def test_a_failed_fold_is_not_tested_and_leaves_the_family():
    results = _results(np.random.default_rng(1))
    broken = (results["method"] == "noise") & (results["outcome"] == "CLE") & (results["fold"] == 2)
    results.loc[broken, ["accuracy", "status"]] = [np.nan, "failed"]
    table = compare.compare(compare.fold_differences(results, "ref"), "ref").set_index(["outcome", "method"])
    row = table.loc[("CLE", "noise")]
    assert row["verdict"] == "not tested" and "2 of 10 folds failed" in row["note"] and np.isnan(row["p_holm"])
    assert table["adj_level"].iloc[0] == pytest.approx(1 - 0.05 / 3)  # three tests left in the family


@pytest.mark.slow
def test_evaluate_reference_repeats_and_a_skipped_method(cohort_dir, capsys):  # noqa: F811
    from copd_ifm.evaluation.features import write_features

    few = pd.DataFrame({"sid": ["S000", "S001"], "f0": [0.1, 0.2]})
    write_features(cohort_dir / "few" / "features.parquet", few, {"run": "few"})
    out = cohort_dir / "cmp"
    args = ["evaluate", "--cohort", str(cohort_dir / "toy.yaml"), "--outcomes", "logFEV1pp,Paraseptal",
            "--folds", "3", "--repeats", "2", "--sensitivity", "pca-rule", "--out", str(out)]
    rc = cli.main([*args, "--features", f"{cohort_dir / 'run'},{cohort_dir / 'few'}", "--reference", "toy/patch"])
    assert rc == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["repeat"].unique()) == [0, 1]
    assert set(results["method"]) == {"densitometry", "toy/graph", "toy/patch", "chance"}  # 'few' skipped
    assert len(results) == (3 + 1) * 2 * 2 * 3  # three feature sets and the chance row
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert "chance" not in set(comparisons["method"])  # a floor, not one of the compared family
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "few skipped for logFEV1pp: only 2 subjects have the outcome and these features" in report
    assert "| few | skipped | skipped |" in report
    assert "## Paired comparisons with `toy/patch`" in report and "J = 6" in report
    assert "read-out protocol `nested`" in report and "## Read-out sensitivity" in report
    assert "toy/graph [pca-rule]" in report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Paired comparisons with <code>toy/patch</code>" in page and "Read-out sensitivity" in page
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["method"]) == {"densitometry", "toy/graph"}
    assert set(comparisons["outcome"]) == {"logFEV1pp", "Paraseptal"}
    assert (out / "differences.png").read_bytes()[:4] == b"\x89PNG"
    # the same folds in both repeats for every method; repeat 1 differs from repeat 0
    pred = pd.read_csv(out / "predictions.csv")
    folds = pred.pivot_table(index=["outcome", "sid"], columns=["method", "repeat"], values="fold")
    assert (folds[("toy/graph", 1)] == folds[("densitometry", 1)]).all()
    assert (folds[("toy/graph", 0)] != folds[("toy/graph", 1)]).any()

    capsys.readouterr()
    assert cli.main([*args, "--features", str(cohort_dir / "run"), "--reference", "nope"]) == 2
    assert "--reference 'nope' is not a loaded method (loaded: densitometry, toy/graph, toy/patch)" in \
        capsys.readouterr().err
    assert cli.main([*args, "--features", str(cohort_dir / "run"), "--readout", "lasso"]) == 2
    assert "unknown read-out 'lasso' (valid: nested, paper, pca-rule)" in capsys.readouterr().err


def test_cohort_yaml_declares_the_readout(cohort_dir):  # noqa: F811
    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.evaluation.evaluate import evaluate

    text = (cohort_dir / "toy.yaml").read_text(encoding="utf-8")
    (cohort_dir / "pca.yaml").write_text(text + "readout: pca-rule\n", encoding="utf-8")
    results = evaluate(resolve_cohort(str(cohort_dir / "pca.yaml")), [], ["logFEV1pp"], folds=3,
                       out=cohort_dir / "r", sensitivity=[])
    # densitometry's 3 features exceed n_train // 10 = 2 of these 22-23-subject training parts
    fitted = results[results["method"] != "chance"]
    assert len(fitted) == 3 and (fitted["model"] == "PCA-2 + OLS").all()
    assert (results.loc[results["method"] == "chance", "model"] == "training mean").all()
    assert "read-out protocol `pca-rule`" in (cohort_dir / "r" / "report.md").read_text(encoding="utf-8")
