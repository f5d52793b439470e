"""Feature-suppression studies: planning, oracle read-out, aggregation/plots, and a tiny study end to end."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from copd_ifm import config as cfg
from copd_ifm import stats as st_floor
from copd_ifm.cli import main
from copd_ifm.errors import UserError
from natural_images import studies as st
from natural_images.config import LinearConfig
from natural_images.studies import report
from natural_images.linear import fit_linear
from natural_images.trifeature import Trifeature, TrifeatureSpec
from tests.helpers import REPO


def test_study_configs_plan_the_papers_grids():
    difficulty = st.load_study_config("difficulty", "small")
    ids = [p.run_id for p in st.plan_runs(difficulty)]
    assert len(ids) == len(set(ids)) == 9 * 2                           # (5 τ + 5 β, (τ 0.5, β 0) shared) × 2 seeds
    ifm = st.load_study_config("ifm", "paper")
    plans = st.plan_runs(ifm)
    assert len(plans) == 18
    configs = [st.run_config(ifm, p) for p in plans]
    assert {(c.loss.temperature, c.loss.epsilon, c.seed) for c in configs} == {
        (t, e, s) for t in (0.05, 0.2, 0.5) for e in (0.0, 0.1) for s in range(3)}
    assert all(c.model.arch == "resnet18" and c.epochs == 200 and c.data.crop_size == 128 for c in configs)
    small = st.run_config(st.load_study_config("ifm", "small"), plans[0])
    assert small.data.crop_size == small.data.eval_size == 32 and small.data.dataset == "trifeature"


def test_oracle_features_give_perfect_linear_readout():
    """One-hot codes of the three labels as 'features': the read-out must reach 100 % on every feature."""
    spec = TrifeatureSpec(size=32, per_combination=3, test_per_combination=1)
    train, test = Trifeature(spec, "train").targets, Trifeature(spec, "test").targets

    def onehot(y: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.nn.functional.one_hot(y[:, j], 10) for j in range(3)], 1).float()

    lin = LinearConfig(epochs=5, batch_size=250)
    lin.optim.lr = 0.1
    for j, feature in enumerate(("color", "shape", "texture")):
        _, history = fit_linear(onehot(train), train[:, j], 10, lin, test_x=onehot(test), test_y=test[:, j],
                                desc=feature)
        assert history[-1]["test_top1"] == 100.0, feature


def _write_results(out, study, rows):
    for plan, row in zip(st.plan_runs(study), rows):
        path = out / "runs" / plan.run_id / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"run_id": plan.run_id, **row}), encoding="utf-8")


def test_correlation_aggregate_matches_numpy_pearson(tmp_path):
    study = st.load_study_config("correlation", "small")
    rng = np.random.default_rng(0)
    loss = rng.uniform(4, 6, 10)
    err_color = 10 * loss + rng.normal(0, 1, 10)                        # rises with the loss
    err_shape = -5 * loss + rng.normal(0, 3, 10)                        # falls with it
    err_texture = rng.uniform(40, 60, 10)
    plans = st.plan_runs(study)
    rows = [{"seed": 0, "temperature": dict(p.values)["loss.temperature"], "hcl_beta": dict(p.values)["loss.hcl_beta"],
             "ifm_eps": 0.0, "final_loss": loss[i], "acc_color": 100 - err_color[i], "err_color": err_color[i],
             "acc_shape": 100 - err_shape[i], "err_shape": err_shape[i], "acc_texture": 100 - err_texture[i],
             "err_texture": err_texture[i]} for i, p in enumerate(plans)]
    _write_results(tmp_path, study, rows)
    table = st.aggregate(study, tmp_path)
    assert len(table) == 10 and (tmp_path / "correlation.png").stat().st_size > 10_000
    corr = pd.read_csv(tmp_path / "correlation.csv")
    for name, err in (("color", err_color), ("shape", err_shape), ("texture", err_texture)):
        r = corr[(corr["x"] == "final_loss") & (corr["y"] == f"err_{name}")]["pearson_r"].iloc[0]
        assert r == pytest.approx(np.corrcoef(loss, err)[0, 1], abs=1e-3)
    r_cs = corr[(corr["x"] == "err_color") & (corr["y"] == "err_shape")]["pearson_r"].iloc[0]
    assert r_cs == pytest.approx(np.corrcoef(err_color, err_shape)[0, 1], abs=1e-3)
    assert "10 of 10 runs finished" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_difficulty_aggregate_reports_means_and_best_settings(tmp_path):
    study = st.load_study_config("difficulty", "small")
    study.seeds = 2
    rows = []
    for p in st.plan_runs(study):
        v = dict(p.values)
        tau, beta = v["loss.temperature"], v["loss.hcl_beta"]
        rows.append({"seed": v["seed"], "temperature": tau, "hcl_beta": beta, "ifm_eps": 0.0, "final_loss": 5.0,
                     "acc_color": 50 + 40 * tau + v["seed"], "acc_shape": 80 - 10 * tau - 5 * beta,
                     "acc_texture": 30 + 5 * beta})
    _write_results(tmp_path, study, rows)
    st.aggregate(study, tmp_path)
    assert (tmp_path / "difficulty.png").stat().st_size > 10_000
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| 1 | 90.5 ± 0.7 |" in text                                # colour at τ = 1: seeds 0 and 1 → 90, 91
    # colour vs τ by hand: groups (x, x + 1) at 40τ = 2, 4, 8, 20, 40 (mean 14.8): SS between 2·988.8, df 4;
    # SS within 5 × 0.5, df 5, so F = 988.8. Shape (both sweeps) and texture vs β differ without any spread
    # between seeds: untestable, never a "yes". Texture vs τ and colour vs β do not differ (p 1), so Holm
    # runs over 3 tests and ranks colour first: 3 × p
    p_color = stats.f.sf(988.8, 4, 5)
    assert f"color p = {p_color:.2g} (Holm {3 * p_color:.2g}, yes)" in text
    assert "texture p = 1 (Holm 1, no)." in text and "Holm over the 3 testable ANOVAs of this study" in text
    assert "shape untestable (the same accuracies in every seed)" in text
    assert "Best temperature per feature (highest mean; a finding only where the test below says yes): color 1, shape 0.05" in text
    assert "Best hcl_beta per feature (highest mean; a finding only where the test below says yes): color 0, shape 0, texture 4." in text


@pytest.mark.slow
def test_tiny_study_runs_end_to_end_resumes_and_shards(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    study = yaml.safe_load((st.STUDY_CONFIG_DIR / "ifm-small.yaml").read_text(encoding="utf-8"))
    study.update(dataset="digits-standin", seeds=1, loss_batches=2,
                 sweeps=[{"loss.temperature": [0.5], "loss.epsilon": [0.0, 0.1]}])
    study["digits"].update(size=16, n_train=48, n_test=24)
    study["run"].update(epochs=1, batch_size=16, log_every=1)
    study["run"]["data"].update(workers=0)
    study["run"]["simclr"] = {"dim": 32, "hidden": 64}
    study["run"]["knn"]["k"] = 10
    study["run"]["linear"]["epochs"] = 5
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    out = tmp_path / "study"
    argv = ["vision", "study", "ifm", "--config", str(path), "--out", str(out)]

    assert main(argv + ["--shard", "0/2"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 1
    assert "1 of 2 runs finished" in (out / "summary.md").read_text(encoding="utf-8")
    assert main(argv + ["--shard", "1/2"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert list(table["ifm_eps"]) == [0.0, 0.1] and list(table["run_id"]) == ["eps0_tau0.5_seed0",
                                                                              "eps0.1_tau0.5_seed0"]
    for col in ("acc_digit", "acc_object"):
        assert table[col].between(0, 100).all()
    np.testing.assert_allclose(table["err_digit"], 100 - table["acc_digit"])
    # plain InfoNCE of 2·16 views: between 0 and the most a cosine logit gap of 2/τ allows
    assert table["final_loss"].between(0, math.log(31) + 2 / 0.5).all()
    for name in ("ifm.png", "ifm_table.csv", "summary.md", "study.yaml"):
        assert (out / name).stat().st_size > 0
    linear = json.loads((out / "runs" / "eps0_tau0.5_seed0" / "linear.json").read_text(encoding="utf-8"))
    assert set(linear["digits-standin"]["top1"]) == {"digit", "object"}

    result = out / "runs" / "eps0.1_tau0.5_seed0" / "result.json"
    mtime = result.stat().st_mtime_ns
    assert main(argv) == 0                                             # everything finished: nothing reruns
    assert result.stat().st_mtime_ns == mtime

    study["run"]["data"]["workers"] = 1                                # where/how data loads may change
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    assert main(argv + ["--report-only"]) == 0 and main(argv) == 0
    study["run"]["epochs"] = 2
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    assert main(argv) == 2                                             # other settings, same folder: refused
    with pytest.raises(UserError, match="run.epochs=1, not 2"):
        st.run_study(cfg.load(st.StudyConfig, path), out)


def test_a_dataset_folder_built_otherwise_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path))
    study = st.load_study_config("ifm", "small", extra={"dataset": "digits-standin",
                                                        "digits": {"size": 16, "n_train": 10, "n_test": 10}})
    folder = st.ensure_dataset(study)
    assert (folder / "dataset.json").is_file() and folder.parent == tmp_path / "vision" / "small"
    assert st.ensure_dataset(study) == folder
    study.digits.n_train = 20
    with pytest.raises(UserError, match="n_train"):
        st.ensure_dataset(study)


def test_a_crashed_run_is_logged_the_others_finish_and_the_command_fails(tmp_path, monkeypatch):
    study = st.load_study_config("ifm", "small", extra={"seeds": 1, "control": False})
    calls = []

    def fake_run(study_, plan, out, device):
        calls.append(plan.run_id)
        if len(calls) == 1:
            raise RuntimeError("loss is NaN")
        row = {"run_id": plan.run_id, "seed": 0, "temperature": dict(plan.values)["loss.temperature"],
               "ifm_eps": dict(plan.values)["loss.epsilon"], "final_loss": 5.0, "acc_color": 90.0}
        path = out / "runs" / plan.run_id / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(row), encoding="utf-8")
        return row

    monkeypatch.setattr(st.run, "ensure_dataset", lambda study_, workers=1: tmp_path)
    monkeypatch.setattr(st.run, "execute_run", fake_run)
    with pytest.raises(UserError, match=r"1 run\(s\) failed \(eps0_tau0.05_seed0\)"):
        st.run_study(study, tmp_path / "out")
    assert len(calls) == 6
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 5


def test_paired_difference_interval_and_p_by_hand():
    seeds = pd.Index([0, 1, 2], name="seed")
    d = st.paired_difference(pd.Series([11.0, 12.0, 13.0], seeds), pd.Series([10.0, 10.0, 10.0], seeds))
    # d = 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, so half-width 4.302653 / √3; t = 2√3, p = 0.07418
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert d["high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert d["p"] == pytest.approx(0.07418, abs=1e-4)
    zero = st.paired_difference(pd.Series([5.0, 6.0, 7.0], seeds), pd.Series([5.0, 6.0, 7.0], seeds))
    assert zero["low"] == zero["high"] == 0.0 and zero["p"] == 1.0
    one = st.paired_difference(pd.Series([5.0], [0]), pd.Series([4.0], [0]))
    assert one["n"] == 1 and math.isnan(one["low"])


def test_welch_difference_interval_and_p_by_hand():
    d = st_floor.welch_difference(pd.Series([11.0, 12.0, 13.0]), pd.Series([9.0, 10.0, 11.0, 10.0]))
    # var/n: 1/3 and (2/3)/4 = 1/6, so se = √0.5; Satterthwaite df = 0.25 / ((1/3)²/2 + (1/6)²/3) = 3.857
    se, df = math.sqrt(0.5), 0.25 / ((1 / 3) ** 2 / 2 + (1 / 6) ** 2 / 3)
    assert d["n"] == 3 and d["n_b"] == 4 and d["mean"] == pytest.approx(2.0)
    assert d["low"] == pytest.approx(2 - stats.t.ppf(0.975, df) * se)
    assert d["p"] == pytest.approx(2 * stats.t.sf(2 / se, df))
    flat = st_floor.welch_difference(pd.Series([5.0, 5.0]), pd.Series([4.0, 4.0]))
    assert flat["mean"] == 1.0 and math.isnan(flat["p"])               # no spread: nothing to test
    assert math.isnan(st_floor.welch_difference(pd.Series([5.0, 6.0]), pd.Series([4.0]))["p"])


def test_extra_untrained_initialisations_pin_down_the_floor(tmp_path):
    study = st.load_study_config("ifm", "small", extra={"seeds": 3, "controls": 6})
    assert [p.run_id for p in st.plan_controls(study)] == [f"untrained_seed{s}" for s in range(6)]
    _write_results(tmp_path, study, _ifm_rows(study, {"color": 0.0, "shape": 0.0, "texture": 0.0}, [0, 1, -1]))
    # trained seed means 50, 51, 49; shape controls 44..49 (mean 46.5): the three seeds' own controls alone
    # (44, 49, 45) leave a paired test at p = 0.19, six initialisations do not
    _write_controls(tmp_path, [40.0] * 6, [44.0, 49.0, 45.0, 48.0, 47.0, 46.0], [20.0] * 6)
    st.aggregate(study, tmp_path)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    welch = stats.ttest_ind([50.0, 51.0, 49.0], [44.0, 49.0, 45.0, 48.0, 47.0, 46.0], equal_var=False)
    assert welch.pvalue < 0.05 < stats.ttest_rel([50.0, 51.0, 49.0], [44.0, 49.0, 45.0]).pvalue
    assert "shape +3.5 points [" in text and f"p = {welch.pvalue:.2g}" in text
    assert "6 random initialisation(s)" in text and "3 seed(s), against the 6 untrained encoders" in text
    assert "**Verdict:** training moved color, shape, texture above the untrained encoder" in text
    assert "z-scored (training split's mean and sd)" in text and "100 epochs" in text
    assert len(pd.read_csv(tmp_path / "controls.csv")) == 6
    refs = report.references(pd.read_csv(tmp_path / "results.csv"), pd.read_csv(tmp_path / "controls.csv"),
                             ["shape"])
    assert refs.control["shape"] == pytest.approx(46.5) and refs.control_range["shape"] == (44.0, 49.0)


def test_holm_adjusts_only_the_family_members_with_a_p():
    p = pd.Series([0.01, 0.04, math.nan, 0.03, 0.001])
    family = pd.Series([True, True, True, True, False])
    # by hand over 0.01, 0.03, 0.04: 3 × 0.01 = 0.03, 2 × 0.03 = 0.06, max(0.06, 1 × 0.04) = 0.06
    adjusted = st_floor.holm(p, family)
    assert adjusted[[0, 3, 1]].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert adjusted[[2, 4]].isna().all()


def _ifm_rows(study, effects, seeds_noise, ifm_noise=(0.0, 0.0, 0.0)):
    """Result rows for every planned run: accuracy = 50 + (effect + ifm_noise(seed))·[ε > 0] + noise(seed),
    chance columns included."""
    rows = []
    for p in st.plan_runs(study):
        v = dict(p.values)
        row = {"seed": v["seed"], "temperature": v["loss.temperature"], "ifm_eps": v["loss.epsilon"],
               "hcl_beta": 0.0, "final_loss": 3.0, "chance_loss": math.log(255), "loss_pairs": 128,
               "train_images": 1000, "arch": "resnet18", "width": 0.25, "stem": "cifar", "epochs": 30}
        for f, effect in effects.items():
            row[f"acc_{f}"] = (50 + (effect + ifm_noise[v["seed"]] if v["loss.epsilon"] > 0 else 0)
                               + seeds_noise[v["seed"]])
            row[f"chance_{f}"] = 10.0
        rows.append(row)
    return rows


def _write_controls(out, color, shape, texture):
    for seed, (c, s, t) in enumerate(zip(color, shape, texture)):
        path = out / "runs" / f"untrained_seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"run_id": path.parent.name, "seed": seed, "final_loss": 5.5, "acc_color": c,
                                    "acc_shape": s, "acc_texture": t}), encoding="utf-8")


def test_ifm_report_counts_only_cells_whose_interval_excludes_zero(tmp_path):
    study = st.load_study_config("ifm", "small", extra={"seeds": 3})
    _write_results(tmp_path, study, _ifm_rows(study, {"color": 5.0, "shape": 0.0, "texture": -3.0}, [0, 1, -1],
                                              ifm_noise=[0.2, -0.1, -0.1]))
    _write_controls(tmp_path, [40.0] * 3, [20.0, 22.0, 19.0], [20.0, 22.0, 19.0])
    st.aggregate(study, tmp_path)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert text.index("## Scale and limits") < text.index("Paper (Fig. 6")
    assert "width 0.25, cifar stem, 32-px images, 1000 training images" in text
    assert "vs ln(2N − 1) = 5.54 at chance" in text and "color 10.0 %" in text
    assert "shape 20.3 ± 1.5 %" in text                                # control mean ± sd over 3 seeds
    assert "**Verdict:** training moved color, shape, texture above the untrained encoder" in text
    # colour +5.2/+4.9/+4.9: better; shape +0.2/−0.1/−0.1: not a win; texture −3: worse (3 τ each); paired
    # t over 3 seeds: colour p = 0.00037, texture p = 0.0011, Holm over 9 cells keeps both below 5 %
    assert "IFM better in 3, worse in 3, no detectable difference in 3, untestable in 0, on a feature not learned in 0" in text
    # shape: mean 0, sd √0.03, half-width t(0.975, 2)·sd/√3 = 0.43
    assert "| 0.05 | 0.1 | shape | +0.0 | [-0.4, +0.4] | 1 | 1 | 3 | no detectable difference |" in text
    assert "| 0.05 | 0 | 3 | 50.0 ± 1.0 |" in text
    assert len(pd.read_csv(tmp_path / "controls.csv")) == 3 and (tmp_path / "ifm.png").stat().st_size > 10_000


def test_holm_and_an_unlearned_feature_keep_a_nominal_win_from_counting(tmp_path):
    study = st.load_study_config("ifm", "small", extra={"seeds": 3})
    noise = [0.3, -0.3, 0.0]
    _write_results(tmp_path, study, _ifm_rows(study, {"color": 1.0, "shape": 1.0, "texture": 0.0}, [0, 1, -1],
                                              ifm_noise=noise))
    # shape per seed: trained mean 50 + noise(seed) + (1 + ifm_noise) / 2 = 50.65, 51.35, 49.5 vs its own
    # control 50.5, 51.5, 49.2: +0.15, −0.15, +0.3, not above the untrained encoder
    _write_controls(tmp_path, [40.0] * 3, [50.5, 51.5, 49.2], [20.0, 22.0, 19.0])
    st.aggregate(study, tmp_path)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "**Verdict:** training moved color, texture above the untrained encoder; shape is not" in text
    # colour: differences 1.3, 0.7, 1.0 → t = 1 / (0.3 / √3) = 5.774, two-sided p(t_2) = 0.02871; its interval
    # excludes zero but Holm over the 6 cells of learned features gives 6 × 0.02871 = 0.172
    p = 2 * stats.t.sf(1 / (0.3 / math.sqrt(3)), 2)
    assert p == pytest.approx(0.02871, abs=1e-5)
    assert f"| 0.05 | 0.1 | color | +1.0 | [+0.3, +1.7] | {p:.2g} | {6 * p:.2g} | 3 | no detectable difference |" in text
    assert "| 0.05 | 0.1 | shape | +1.0 | [+0.3, +1.7] | 0.029 | nan | 3 | feature not learned" in text
    assert "IFM better in 0, worse in 0, no detectable difference in 6, untestable in 0, on a feature not learned in 3" in text
    learned = st.ifm_cells(pd.read_csv(tmp_path / "results.csv"), ["color", "shape", "texture"], ["color", "texture"])
    assert learned["p_holm"].notna().sum() == 6


def test_one_seed_reports_no_spread_and_a_loss_at_chance_is_a_smoke_test(tmp_path):
    study = st.load_study_config("ifm", "small", extra={"seeds": 1, "control": False})
    rows = _ifm_rows(study, {"color": 1.0, "shape": 0.0}, [0])
    for row in rows:
        row["final_loss"] = 5.45                                         # ln 255 = 5.54: within 5 % of chance
    _write_results(tmp_path, study, rows)
    st.aggregate(study, tmp_path)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "**Verdict: smoke test only.**" in text and "within 5 % of its chance value" in text
    assert "±" not in text and "mean (one seed: no spread)" in text
    assert "IFM better in 0, worse in 0, no detectable difference in 0, untestable in 6" in text
    assert "No untrained-encoder control (study.control: false)" in text
    assert pd.read_csv(tmp_path / "ifm_table.csv")["acc_color_sd"].isna().all()


@pytest.mark.parametrize("name", ["ifm-small", "difficulty-small"])
def test_report_only_on_a_committed_study_without_runs_regenerates_it_unchanged(name, tmp_path, monkeypatch):
    """The committed study folders hold results.csv but no run folders: re-reporting keeps every run."""

    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    committed = REPO / "benchmarks" / "studies" / name
    out = tmp_path / name
    shutil.copytree(committed, out)
    study = name.removesuffix("-small")
    assert main(["vision", "study", study, "--scale", "small", "--out", str(out), "--report-only"]) == 0
    for path in sorted(committed.iterdir()):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert "18 of 18 runs finished" in (out / "summary.md").read_text(encoding="utf-8")


def test_report_only_with_fewer_planned_runs_than_reported_is_refused(tmp_path, monkeypatch, capsys):

    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    committed = REPO / "benchmarks" / "studies" / "ifm-small"
    out = tmp_path / "ifm-small"
    shutil.copytree(committed, out)
    argv = ["vision", "study", "ifm", "--scale", "small", "--out", str(out), "--report-only", "--seeds", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eps0.1_tau0.05_seed2" in err and "--seeds" in err
    for path in committed.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.slow
def test_vision_demo_runs_offline_at_tiny_scale(tmp_path, monkeypatch, one_thread, capsys):
    """`vision demo`: Trifeature generated here, baseline and IFM pretrained, the untrained control read out."""
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    tiny = ["trifeature.size=16", "run.batch_size=32", "run.linear.epochs=3", "run.data.workers=0",
            "loss_batches=1", "run.simclr.dim=16", "run.simclr.hidden=32", "run.knn.k=5"]
    argv = ["vision", "demo", "--out", str(out), "--epochs", "1", "--workers", "1"]
    for item in tiny:
        argv += ["--set", item]
    assert main(argv) == 0
    assert (tmp_path / "home" / "vision" / "small" / "trifeature" / "dataset.json").is_file()   # made offline
    table = pd.read_csv(out / "results.csv")
    assert list(table["run_id"]) == ["eps0_tau0.5_seed0", "eps0.1_tau0.5_seed0"]
    assert list(table["ifm_eps"]) == [0.0, 0.1] and (table["epochs"] == 1).all()
    controls = pd.read_csv(out / "controls.csv")
    assert list(controls["run_id"]) == ["untrained_seed0"] and (controls["epochs"] == 0).all()
    for feature in ("color", "shape", "texture"):
        assert table[f"acc_{feature}"].between(0, 100).all() and (table[f"chance_{feature}"] == 10).all()
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "2 of 2 runs finished" in summary and "1 untrained-encoder control" in summary
    assert summary in capsys.readouterr().out
    result = out / "runs" / "eps0.1_tau0.5_seed0" / "result.json"
    mtime = result.stat().st_mtime_ns
    assert main(argv) == 0 and result.stat().st_mtime_ns == mtime          # a rerun reuses the finished runs
    from natural_images.run import load_model

    model, config = load_model(out / "runs" / "eps0.1_tau0.5_seed0", "cpu")   # kept for vision linear/robust/...
    assert config.loss.epsilon == 0.1 and config.model.width == 0.25
