"""Error hints name a fix that the command printing them accepts, and never repeat what the user already gave."""
from __future__ import annotations


import pytest

from copd_ifm.cli import main

# Each stage that reads a cohort's manifest, with copdgene (restricted data: no manifest here).
STAGES = {
    "preprocess": ["preprocess", "--cohort", "copdgene"],
    "pretrain": ["pretrain", "--cohort", "copdgene", "--config", "baseline"],
    "evaluate": ["evaluate", "--cohort", "copdgene", "--features", "runs/none"],
}


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("stage", STAGES)
def test_missing_manifest_hint_is_one_the_stage_accepts(stage, tmp_path, capsys):
    err = _error(STAGES[stage], capsys)
    assert err.startswith(f"copd-ifm {stage}: error: cohort 'copdgene': manifest not found")
    assert "--set cohort.manifest=/path/to/manifest.csv" in err and "--set manifest=" not in err
    # following the hint: the stage takes the field and goes on to the next problem (an empty manifest)
    manifest = tmp_path / "mine" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("", encoding="utf-8")
    err = _error(STAGES[stage] + ["--set", f"cohort.manifest={manifest}"], capsys)
    assert "unknown field" not in err and "manifest not found" not in err and str(manifest) in err


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("key", ["cohort.manifest", "manifest"])
def test_missing_manifest_given_with_set_is_not_hinted_again(stage, key, tmp_path, capsys):
    if stage == "pretrain" and key == "manifest":
        pytest.skip("pretrain's own fields take no cohort field without the cohort. prefix")
    missing = tmp_path / "typo" / "manifest.csv"
    err = _error(STAGES[stage] + ["--set", f"{key}={missing}"], capsys)
    assert f"manifest not found: {missing} (from --set {key}={missing}: fix that path" in err
    assert "point at yours" not in err


def test_pretrain_rejects_the_unprefixed_manifest_field(capsys):
    err = _error(STAGES["pretrain"] + ["--set", "manifest=/x.csv"], capsys)
    assert "manifest is a cohort field" in err and "(--set cohort.manifest=…)" in err
