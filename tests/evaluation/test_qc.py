"""``evaluate`` on doubtful data: out-of-range outcomes, subjects without features, levels too rare to fold."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from copd_ifm import cli
from copd_ifm.evaluation import evaluate as evaluate_module
from copd_ifm.evaluation.features import write_features

N = 20


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    """20 subjects: FEV1pp of S001 is -5 and of S002 is 250, FEV1/FVC given in percent, CLE codes i % 5
    (4 subjects per level, fewer than 5 folds), features missing for S005."""
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(1)
    sids = [f"S{i:03d}" for i in range(N)]
    fev1pp = rng.uniform(40, 110, N)
    fev1pp[1], fev1pp[2] = -5.0, 250.0
    pd.DataFrame({"sid": sids, "image": "x.nii.gz", "FEV1pp_utah": fev1pp,
                  "FEV1_FVC_utah": rng.uniform(45, 80, N).round(1), "Emph_Severity": np.arange(N) % 5}
                 ).to_csv(tmp_path / "manifest.csv", index=False)
    features = pd.DataFrame({"sid": sids, **{f"f{i}": rng.normal(size=N) for i in range(3)}}).drop(index=5)
    write_features(tmp_path / "run" / "features.parquet", features, {"run": "toy"})
    densitometry = pd.DataFrame({"sid": sids, "laa950_pct": rng.uniform(0, 30, N),
                                 "perc15_hu": rng.uniform(-980, -880, N), "lung_volume_l": rng.uniform(4, 7, N)})
    monkeypatch.setattr(evaluate_module, "load_densitometry", lambda c: densitometry)
    (tmp_path / "toy.yaml").write_text("name: toy\nmanifest: manifest.csv\n", encoding="utf-8")
    return tmp_path


@pytest.mark.slow
def test_rare_levels_skip_the_outcome_and_qc_warnings_reach_console_and_report(cohort, caplog, capsys):
    caplog.set_level(logging.WARNING)
    out = cohort / "report"
    rc = cli.main(["evaluate", "--cohort", str(cohort / "toy.yaml"), "--features", str(cohort / "run"),
                   "--outcomes", "logFEV1pp,logFEV1FVC,CLE", "--out", str(out)])
    assert rc == 0 and "Traceback" not in capsys.readouterr().err
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["outcome"].unique()) == ["logFEV1FVC", "logFEV1pp"]
    assert len(results[results["method"] != "chance"]) == 2 * 2 * 5    # outcomes × methods × folds
    assert len(results[results["method"] == "chance"]) == 2 * 5         # the no-feature baseline

    expected = [
        "CLE skipped: CLE: its most common level has only 4 subjects, fewer than --folds 5",
        "FEV1pp_utah (FEV1pp) of 1 subject(s) out of range, e.g. sid 'S001' = -5 (treated as missing)",
        "FEV1pp_utah (FEV1pp) of 1 subject(s) out of range, e.g. sid 'S002' = 250 (kept)",
        "FEV1_FVC_utah (FEV1FVC) of 20 subject(s) out of range",
        "looks like a percent",
        "toy: 1 of 20 manifest subjects have no features (e.g. 'S005'",
    ]
    report = (out / "report.md").read_text(encoding="utf-8")
    warnings = json.loads((out / "results.json").read_text(encoding="utf-8"))["warnings"]
    console = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for text in expected:
        assert text in report, text
        assert any(text in w for w in warnings), text
        assert any(text in line for line in console), text
    assert "## Warnings" in report and "<h2>Warnings</h2>" in (out / "report.html").read_text(encoding="utf-8")


def test_every_outcome_skipped_is_one_line(cohort, capsys):
    rc = cli.main(["evaluate", "--cohort", str(cohort / "toy.yaml"), "--features", str(cohort / "run"),
                   "--outcomes", "CLE", "--out", str(cohort / "report")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1
    assert "every outcome was skipped" in err[0] and "use --folds 4 or drop this outcome" in err[0]
