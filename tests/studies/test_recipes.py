"""Recipe studies (the paper's Table 1 grid, the robust-feature pair): plan, configs, statistics, end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from copd_ifm.cli import main
from natural_images.studies.recipes import load_recipe, method_config, plan_runs, run_config
from natural_images.studies.recipes_report import comparisons
from natural_images.studies.recipes_run import run_recipe
from natural_images.trifeature import TrifeatureSpec, make_trifeature
from tests import helpers


def test_plan_and_official_sibling_configs() -> None:
    study = load_recipe("table1", "paper")
    plans = plan_runs(study)
    assert [p.run_id for p in plans[:4]] == ["moco_eps0_seed0", "moco_eps0_seed1", "moco_eps0_seed2",
                                             "moco_eps0.05_seed0"]
    assert len(plans) == 2 * 4 * 3 + 3 and plans[-1].run_id == "untrained_seed2" and plans[-1].control
    assert Path(method_config(study, "adco")).name == "imagenet100_adco.yaml"   # the official AdCo settings
    assert method_config(study, "moco") == "imagenet100_moco"
    adco = run_config(study, next(p for p in plans if p.run_id == "adco_eps0.1_seed1"))
    assert (adco.method, adco.loss.epsilon, adco.seed) == ("adco", 0.1, 1)
    tiny = load_recipe("table1", "tiny")
    assert method_config(tiny, "adco") == "cpu_tiny"                             # no sibling: the same config


def test_ifm_minus_baseline_is_paired_over_seeds() -> None:
    base, ifm = [60.0, 62.0, 61.0], [63.0, 63.5, 64.5]
    rows = [{"method": "moco", "epsilon": e, "seed": s, "top1_label": v}
            for e, values in ((0.0, base), (0.1, ifm)) for s, v in enumerate(values)]
    rows += [{"method": "untrained", "epsilon": 0.0, "seed": s, "top1_label": 20.0} for s in range(3)]
    table = comparisons(pd.DataFrame(rows))
    assert len(table) == 1                                    # the untrained control is not a method
    d = [i - b for i, b in zip(ifm, base)]
    assert table["p"].item() == pytest.approx(stats.ttest_rel(ifm, base).pvalue)
    assert table["mean"].item() == pytest.approx(sum(d) / 3)
    assert table["verdict"].item() == ("higher" if table["p_holm"].item() < 0.05 else "no detectable difference")
    one = comparisons(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    assert one["verdict"].tolist() == ["not tested (1 seed)"] and math.isnan(one["p"].item())


@pytest.mark.parametrize("argv, message", [
    (["robust", "--set", "methods=[moco]"], "methods must be [simclr]"),
    (["table1", "--set", "epsilons=[0.1]"], "hold the baseline 0"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys) -> None:
    code = main(["vision", "study", *argv, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipes")
    make_trifeature(root / "trifeature", TrifeatureSpec(size=16, per_combination=2, test_per_combination=1))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["table1", "robust"])
def test_recipe_end_to_end(kind: str, data_root: Path, tmp_path: Path) -> None:
    overrides = [f"run.data.root={data_root}", "run.data.limit=160", "epsilons=[0.0,0.1]"]
    overrides += ["methods=[moco]"] if kind == "table1" else ["robust.max_steps=2"]
    with helpers.one_thread():
        out = run_recipe(load_recipe(kind, "tiny", overrides=overrides), tmp_path / kind, device="cpu")
    table = pd.read_csv(out / "results.csv")
    assert table["run_id"].tolist() == [f"{table['method'].iloc[0]}_eps0_seed0",
                                        f"{table['method'].iloc[0]}_eps0.1_seed0", "untrained_seed0"]
    assert table.loc[table["method"] == "untrained", "epochs"].item() == 0
    metric = "D_R" if kind == "robust" else "top1_color"
    result = json.loads((out / "runs" / "untrained_seed0" / "result.json").read_text(encoding="utf-8"))
    assert table.loc[2, metric] == pytest.approx(result[metric])
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "not tested (1 seed)" in summary and "untrained" in summary and (out / f"{kind}.png").is_file()
    before = (out / "results.csv").read_bytes()
    run_recipe(load_recipe(kind, "tiny", overrides=overrides), out, device="cpu", report_only=True)
    assert (out / "results.csv").read_bytes() == before
