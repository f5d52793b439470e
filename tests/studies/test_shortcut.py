"""CT shortcut study: nuisance setting, bad input, and a study end to end (numbers, determinism, resume)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from copd_ifm.cli import main
from copd_ifm.cohort import phenotypes
from copd_ifm.cohort.synthetic import generate_cohort
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.errors import UserError
from copd_ifm.studies import ct_runs
from copd_ifm.studies.shortcut import report
from copd_ifm.studies.shortcut.plan import load_study, plan_runs
from copd_ifm.studies.shortcut.run import run_study
from tests import helpers
from tests.helpers import REPO

# The tiny config shrunk further: 10 subjects, 2 folds, a 2-epoch pretraining of a very narrow model.
EXTRA = {"seeds": 2, "epsilons": [0.5], "folds": 2, "samples_per_dim": 4,
         "latents": ["emphysema", "airway", "site"], "outcomes": ["logFEV1pp", "CLE"],
         "cohort": {"n": 10, "seed": 1, "workers": 1, "landmark_step_mm": 56.0},
         "pretrain_overrides": {"model.channels": [4, 8], "model.feat_dim": 16, "model.embed_dim": 16,
                                "moco.patch_queue": 16, "moco.graph_queue": 8, "schedule.patch_batch": 5,
                                "schedule.graph_batch": 4, "schedule.landmarks_per_epoch": 4}}


def _study():
    return load_study("tiny", extra=EXTRA)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: on a small shared CPU, thread hand-offs cost more than these tiny models compute."""
    with helpers.one_thread(), threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shortcut") / "study"
    run_study(_study(), out, device="cpu")
    return out


def _copy_cohort(src: Path, dst: Path) -> None:
    """A fresh study folder that reuses ``src``'s cohort and store (so only the runs are redone)."""
    for name in ("cohort", "store"):
        shutil.copytree(src / name, dst / name)


def _numbers(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").sort_values(["run_id", "features", "latent", "metric"],
                                                        ignore_index=True)


def test_nuisance_scales_the_site_differences() -> None:
    table = np.asarray(phenotypes.SITES)
    assert [phenotypes.site_scanner(i) for i in range(len(table))] == [tuple(r) for r in phenotypes.SITES]
    flat = np.array([phenotypes.site_scanner(i, 0.0) for i in range(len(table))])
    np.testing.assert_allclose(flat, np.broadcast_to(table.mean(0), flat.shape))
    double = np.array([phenotypes.site_scanner(i, 2.0) for i in range(len(table))])
    np.testing.assert_allclose(double - table.mean(0), 2 * (table - table.mean(0)))
    with pytest.raises(ValueError, match="non-positive"):
        phenotypes.check_nuisance(3.0)           # the quietest site's noise sd would go below zero


def test_nuisance_cohort_keeps_the_default_parameters_file(tmp_path: Path) -> None:
    default = generate_cohort(tmp_path / "a", n=1, seed=0, spacing_mm=8.0, workers=1).parent
    assert "nuisance" not in json.loads((default / "synth.json").read_text(encoding="utf-8"))
    strong = generate_cohort(tmp_path / "b", n=1, seed=0, spacing_mm=8.0, workers=1, nuisance=2.0).parent
    a, b = (pd.read_csv(p / "latents.csv").iloc[0] for p in (default, strong))
    assert a.site == b.site and a.emphysema == b.emphysema     # the same draws; only the scanner differs
    mean = np.asarray(phenotypes.SITES)[:, 0].mean()
    assert b.noise_sd_hu == pytest.approx(a.noise_sd_hu + (a.noise_sd_hu - mean), abs=1e-4)
    with pytest.raises(UserError, match="holds a different synthetic cohort"):
        generate_cohort(tmp_path / "b", n=1, seed=0, spacing_mm=8.0, workers=1)


@pytest.mark.parametrize("argv, message", [
    (["--shard", "3/2"], "need 0 <= K < N"),
    (["--eps=-0.1"], "ε must be >= 0"),
    (["--eps", "0.1,x"], "comma-separated numbers"),
    (["--set", "latents=[emphysema,lungs]"], "unknown latent 'lungs'"),
    (["--tau", "0"], "τ must be > 0"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys) -> None:
    try:
        code = main(["study", "shortcut", "--scale", "tiny", "--out", str(tmp_path / "s"), *argv])
    except SystemExit as exc:          # argparse rejects the shard spec itself
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s" / "runs").exists()


def test_plan_and_shards() -> None:
    study = load_study("tiny", extra={"seeds": 3, "epsilons": [0.5, 0.1, 0.0], "taus": [0.1, 0.2]})
    plans = plan_runs(study, 0.2)
    assert len(plans) == 3 * (1 + 2 * 3)                 # per seed: untrained + 2 τ × (baseline + 2 ε)
    assert len({p.run_id for p in plans}) == len(plans)
    assert sorted(ct_runs.epsilon(p) for p in plans if p.seed == 0 and ct_runs.tau(p) == 0.1) == [0.0, 0.1, 0.5]
    assert plans[0].control and plans[0].run_id == "untrained_seed0" and plans[1].run_id == "tau0.1_eps0_seed0"
    shards = [plans[k::3] for k in range(3)]
    assert sorted(p.run_id for s in shards for p in s) == sorted(p.run_id for p in plans)


@pytest.mark.slow
def test_study_end_to_end(finished: Path) -> None:
    results = pd.read_csv(finished / "results.csv")
    assert {"method", "epsilon", "tau", "seed", "features", "latent", "metric", "value"} <= set(results.columns)
    assert set(results["features"]) == {"graph", "patch", "untrained", "untrained_patch", "densitometry", "chance"}
    assert set(results["method"]) == {"baseline", "ifm", "untrained", "densitometry", "chance"}
    assert set(results["latent"]) == {"emphysema", "airway", "site", "logFEV1pp", "CLE"}
    trained = results[results["method"].isin(["baseline", "ifm"])]
    # 2 seeds × (baseline, IFM) × 2 levels × (R² of 3 continuous targets + accuracy and 1-off of 2 ordinal ones)
    assert len(trained) == 2 * 2 * 2 * (3 + 2 * 2)
    for name in ("summary.md", "shortcut.png", "regions.png", "comparisons.csv"):
        assert (finished / name).is_file(), name
    summary = (finished / "summary.md").read_text(encoding="utf-8")
    assert "Synthetic cohort" in summary and "10 subjects" in summary and "ln(K + 1)" in summary
    assert "IFM higher in" in summary and "Robinson" in summary
    baseline_acc = [json.loads((finished / "runs" / f"tau0.2_eps0_seed{s}" / "result.json").read_text())["patch_acc"]
                    for s in (0, 1)]
    queue = json.loads((finished / "runs" / "tau0.2_eps0_seed0" / "result.json").read_text())["patch_chance"]
    assert (f"instance accuracy on the unperturbed logits (positive above every negative): "
            f"{np.mean(baseline_acc):.3f}") in summary
    assert f"1/(K + 1) = {np.exp(-queue):.4f}" in summary
    regions = pd.read_csv(finished / "runs" / "tau0.2_eps0_seed0" / "regions-pca-rule.csv")
    nodes = np.load(finished / "runs" / "tau0.2_eps0_seed0" / "nodes.npy")
    assert len(regions) == nodes.shape[1] and nodes.shape[0] == 10


@pytest.mark.slow
def test_chance_rows_match_a_hand_computation(finished: Path) -> None:
    """Chance R² of a latent: predict each test fold by its training mean, on KFold(2, shuffle, seed 0) of the sids."""
    latents = pd.read_csv(finished / "cohort" / "latents.csv", dtype={"sid": str}).set_index("sid").sort_index()
    y = latents["airway"].to_numpy()
    scores = []
    for train, test in KFold(2, shuffle=True, random_state=0).split(y):
        pred = y[train].mean()
        scores.append(1 - ((y[test] - pred) ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum())
    results = pd.read_csv(finished / "results.csv")
    row = results[(results["method"] == "chance") & (results["latent"] == "airway")]
    assert row["value"].item() == pytest.approx(np.mean(scores), rel=1e-6)


@pytest.mark.slow
def test_finished_study_is_skipped_on_rerun(finished: Path, monkeypatch) -> None:
    before = _numbers(finished)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(ct_runs, "pretrain", must_not_run)
    monkeypatch.setattr(ct_runs, "extract_features", must_not_run)
    run_study(_study(), finished, device="cpu")
    pd.testing.assert_frame_equal(_numbers(finished), before)


@pytest.mark.slow
def test_interrupted_shard_resumes_to_the_same_numbers(finished: Path, tmp_path: Path, monkeypatch) -> None:
    """Shard 1/2 (baseline seed 0, untrained seed 1, IFM seed 1), killed in its last run, then rerun."""
    out = tmp_path / "study"
    _copy_cohort(finished, out)
    original = Checkpointer.save

    def save_then_die(self, state):
        original(self, state)
        if state["epoch"] == 1 and "eps0.5_seed1" in str(self.path):
            raise KeyboardInterrupt      # killed right after the first epoch of the last run

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_study(_study(), out, shard=(1, 2), device="cpu")
    assert Checkpointer(out / "runs" / "tau0.2_eps0.5_seed1").exists()
    assert not (out / "runs" / "tau0.2_eps0.5_seed1" / "result.json").exists()
    monkeypatch.setattr(Checkpointer, "save", original)
    run_study(_study(), out, shard=(1, 2), device="cpu")
    mine = ["tau0.2_eps0_seed0", "untrained_seed1", "tau0.2_eps0.5_seed1"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(mine)
    expected = _numbers(finished)
    expected = expected[expected["run_id"].isin(mine) | expected["run_id"].isna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(_numbers(out), expected)
    assert math.isfinite(json.loads((out / "runs" / "tau0.2_eps0.5_seed1" / "result.json")
                                    .read_text(encoding="utf-8"))["patch_loss"])


@pytest.mark.slow
def test_the_readout_protocol_changes_only_the_report(finished: Path, tmp_path: Path, monkeypatch) -> None:
    """Swapping the declared and the sensitivity protocol re-reports the same runs: the numbers swap too."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    monkeypatch.setattr(ct_runs, "pretrain", lambda *a, **k: pytest.fail("a finished run was retrained"))
    swapped = load_study("tiny", extra={**EXTRA, "readout": "pca-rule", "sensitivity": ["nested"]})
    run_study(swapped, copy, device="cpu", report_only=True)
    declared = pd.read_csv(finished / "results.csv")
    shown = pd.read_csv(copy / "sensitivity.csv")
    pd.testing.assert_frame_equal(shown.drop(columns="readout"), declared)
    before = pd.read_csv(finished / "sensitivity.csv")
    pd.testing.assert_frame_equal(pd.read_csv(copy / "results.csv"), before.drop(columns="readout"))
    assert "## Sensitivity: read-out protocol `nested`" in (copy / "summary.md").read_text(encoding="utf-8")


def _rows(method: str, values: list[float], epsilon: float = 0.0) -> list[dict]:
    return [{"method": method, "epsilon": epsilon, "tau": 0.2, "seed": s, "features": "graph", "latent": "airway",
             "kind": "continuous", "metric": "r2", "value": v} for s, v in enumerate(values)]


def test_comparisons_count_only_what_the_seeds_support() -> None:
    base = [0.30, 0.42, 0.35, 0.38]
    ifm = [0.41, 0.47, 0.49, 0.46]                        # + 0.11, 0.05, 0.14, 0.08
    results = pd.DataFrame(_rows("baseline", base) + _rows("ifm", ifm, 0.1)
                           + _rows("ifm", [b + 0.02 for b in base], 0.5))    # the same +0.02 in every seed
    table = report.comparisons(results).set_index("epsilon")
    d = np.subtract(ifm, base)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert table.loc[0.1, "p"] == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1), rel=1e-9)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert table.loc[0.1, "low"] == pytest.approx(d.mean() - half)
    assert table.loc[0.1, "verdict"] == "higher"           # p ≈ 0.01, alone in its Holm family once ε 0.5 is untestable
    assert math.isnan(table.loc[0.5, "p"]) and table.loc[0.5, "verdict"] == "no detectable difference"
    one_seed = report.comparisons(pd.DataFrame(_rows("baseline", base[:1]) + _rows("ifm", ifm[:1], 0.1)))
    assert one_seed["verdict"].tolist() == ["not tested (1 seed)"]


@pytest.mark.slow
def test_report_only_never_drops_reported_runs(finished: Path, tmp_path: Path, capsys) -> None:
    """A study folder without some run folders is refused in one line, before anything is rebuilt or written."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    run_study(_study(), copy, device="cpu", report_only=True)        # every run folder here: rewritten alike
    pd.testing.assert_frame_equal(_numbers(copy), _numbers(finished))
    shutil.rmtree(copy / "runs" / "untrained_seed1")
    argv = ["study", "shortcut", "--scale", "tiny", "--out", str(copy), "--report-only"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "untrained_seed1" in err and "restore" in err
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_report_only_on_the_committed_study_without_runs_is_refused(tmp_path: Path, capsys) -> None:
    committed = REPO / "benchmarks" / "studies" / "ct-shortcut-small"
    copy = tmp_path / "ct-shortcut-small"
    shutil.copytree(committed, copy)
    assert main(["study", "shortcut", "--scale", "small", "--out", str(copy), "--report-only"]) == 2
    assert "12 finished runs" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in committed.iterdir())
    for path in committed.iterdir():
        assert (copy / path.name).read_bytes() == path.read_bytes(), path.name
