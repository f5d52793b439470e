"""CLI surface and typed config loading."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass, field

import pytest

from copd_ifm import config as cfg
from copd_ifm.cli import STAGES, main
from copd_ifm.cohort.config import CohortConfig, resolve_cohort
from copd_ifm.errors import UserError
from tests.helpers import REPO


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "vision"])
def test_stage_help_shows_defaults(stage, capsys):
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    out = capsys.readouterr().out
    assert "--debug" in out
    assert "default" in out


def test_unknown_flag_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-such-flag" in err[0]


def test_bad_value_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", "--shard", "5/2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard" in err[0]


def test_missing_cohort_config_is_user_error(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    code = main(["preprocess", "--cohort", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(missing) in err[0]


@pytest.mark.integration
def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "copd_ifm", "preprocess", "--cohort", "no-such-cohort"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no-such-cohort" in proc.stderr


@dataclass
class _Inner:
    lr: float = 0.1
    steps: int = 3


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    tags: list[str] = field(default_factory=list)


def test_yaml_overrides_and_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 0.5\n", encoding="utf-8")
    obj = cfg.load(_Outer, path, overrides=["inner.steps=7", "tags=[a, b]"])
    assert obj.name == "run" and obj.inner.lr == 0.5 and obj.inner.steps == 7 and obj.tags == ["a", "b"]
    with pytest.raises(UserError, match=r"inner\.lr.*number"):
        cfg.load(_Outer, path, overrides=["inner.lr=fast"])
    with pytest.raises(UserError, match=r"unknown field 'nope'"):
        cfg.load(_Outer, path, overrides=["inner.nope=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="invalid YAML"):
        cfg.load(_Outer, bad)


def test_resolved_config_round_trips(tmp_path):
    obj = cfg.load(_Outer, None, overrides=["inner.lr=0.25"])
    cfg.save_resolved(obj, tmp_path / "config.yaml")
    again = cfg.load(_Outer, tmp_path / "config.yaml")
    assert again == obj and cfg.config_hash(again) == cfg.config_hash(obj)


def test_resolve_cohort_by_name_yaml_and_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    demo = resolve_cohort("demo")
    assert isinstance(demo, CohortConfig) and demo.spacing_mm == 2.0 and demo.synthetic is not None
    assert str(demo.manifest_path).startswith(str(tmp_path / "home"))
    gene = resolve_cohort("copdgene", overrides=["spacing_mm=1.25"])
    assert gene.spacing_mm == 1.25 and gene.outcomes["CLE"] == "Emph_Severity"
    manifest = tmp_path / "mycohort" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("sid,image\n", encoding="utf-8")
    csv_cohort = resolve_cohort(str(manifest))
    assert csv_cohort.name == "mycohort" and csv_cohort.manifest_path == manifest.resolve()
    with pytest.raises(UserError, match="unknown cohort"):
        resolve_cohort("nonexistent")
    with pytest.raises(UserError, match="spacing_mm"):
        resolve_cohort("demo", overrides=["spacing_mm=50"])


def _readme_commands(stage: str) -> list[str]:
    """The README's `copd-ifm STAGE --cohort copdgene …` command lines, split into arguments."""
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.startswith(f"copd-ifm {stage} ") and "copdgene" in line]
    assert lines, f"README has no copdgene {stage} command"
    return shlex.split(lines[0])[1:]


@pytest.mark.integration
def test_readme_copdgene_commands_run_verbatim(tiny_cohort, tmp_path, monkeypatch):
    """The README's COPDGene preprocess and pretrain commands, with only the manifest path swapped for a small
    synthetic one and settings appended that make them fast; both reach the cohort through --set cohort.…"""
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    manifest = str(tiny_cohort.manifest_path)
    small = ["--set", "cohort.spacing_mm=4", "--set", "cohort.patch_size=8", "--set", "cohort.landmark_step_mm=40"]

    def readme(stage: str) -> list[str]:
        args = [a.replace("/data/copdgene/manifest.csv", manifest) for a in _readme_commands(stage)]
        assert f"cohort.manifest={manifest}" in args
        return [a if a != "16" else "1" for a in args]  # --workers 16 → 1 on a test machine

    assert main([*readme("preprocess"), *small]) == 0
    fast = [a for o in ["model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
                        "moco.graph_queue=8", "schedule.epochs=1", "schedule.patch_batch=4", "schedule.graph_batch=4",
                        "schedule.landmarks_per_epoch=2", "schedule.graph_subepochs=1",
                        "schedule.graph_views=feature", "workers=0", "device=cpu"] for a in ("--set", o)]
    run = tmp_path / "run"
    assert main([*readme("pretrain"), *small, *fast, "--out", str(run)]) == 0
    saved = cfg.read_yaml(run / "config.yaml")
    assert saved["cohort"]["name"] == "copdgene" and saved["cohort"]["manifest"] == manifest
    assert saved["pretrain"]["loss"]["epsilon"] == 0.1 and saved["pretrain"]["name"] == "ifm"


def test_zero_valued_flags_are_given_not_dropped():
    from copd_ifm.cli import build_parser
    from copd_ifm.cli.args import overrides
    from copd_ifm.cli.ct import _PRETRAIN_FLAGS

    args = build_parser().parse_args(["pretrain", "--ifm-eps", "0"])
    assert overrides(args, _PRETRAIN_FLAGS) == {"loss.epsilon": 0.0}     # not the config's ε silently
    assert overrides(build_parser().parse_args(["pretrain"]), _PRETRAIN_FLAGS) == {}


def test_default_configs_come_from_the_package_and_the_env_overrides(tmp_path, monkeypatch):
    from copd_ifm.files import package_path

    monkeypatch.delenv("COPD_IFM_CONFIGS", raising=False)
    # In a checkout the packaged folder is the top-level configs/ itself (one source for both installs).
    assert cfg.default_config_dir().resolve() == (Path(cfg.__file__).parents[1] / "configs").resolve()
    assert cfg.default_config_dir() == package_path("copd_ifm", "configs")
    monkeypatch.setenv("COPD_IFM_CONFIGS", str(tmp_path))
    assert cfg.default_config_dir() == tmp_path
