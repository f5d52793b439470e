"""docs/walkthrough.md: its commands chain as written (run verbatim on a tiny cohort) and parse as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from copd_ifm.cli import build_parser
from copd_ifm.cohort.config import resolve_cohort
from tests.helpers import REPO

DOC = REPO / "docs" / "walkthrough.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _commands(section: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _shim(folder: Path) -> Path:
    """A ``copd-ifm`` on PATH that runs this checkout (the installed script may point at another one)."""
    folder.mkdir()
    script = folder / "copd-ifm"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m copd_ifm \"$@\"\n", encoding="utf-8")
    script.chmod(0o755)
    return folder


@pytest.mark.integration
@pytest.mark.slow
def test_section_one_runs_verbatim_on_a_tiny_cohort(tmp_path: Path) -> None:
    commands = _commands(_section("1. "))
    assert [c.split()[1] for c in commands] == ["synth", "preprocess", "pretrain", "pretrain", "pretrain", "extract",
                                                 "extract", "extract", "evaluate"]
    work = tmp_path / "work"
    work.mkdir()
    repo = str(REPO)
    env = {**os.environ, "N": "10", "SPACING": "4", "COPD_IFM_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PATH": f"{_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    script = "set -eu\n" + "\n".join(commands) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cohort = resolve_cohort(str(work / "data" / "demo" / "manifest.csv"))
    assert (cohort.spacing_mm, cohort.patch_size) == (4.0, 8)          # synth.json: the demo's 32 mm cube at 4 mm
    results = pd.read_csv(work / "reports" / "demo" / "results.csv")
    methods = set(results["method"])
    assert {"densitometry", "demo-baseline/graph", "demo-ifm/graph", "demo-untrained/graph", "chance"} <= methods
    assert results.groupby(["method", "outcome"])["fold"].nunique().eq(5).all()
    report = (work / "reports" / "demo" / "report.md").read_text(encoding="utf-8")
    assert "Synthetic cohort" in report and "## Noise" in report and "| chance |" in report
    for run in ("demo-baseline", "demo-ifm", "demo-untrained"):
        assert (work / "runs" / run / "features.parquet").is_file()
        assert len(pd.read_parquet(work / "runs" / run / "features.parquet")) == 10


def test_section_two_parses_as_written_and_a_real_manifest_keeps_the_real_ct_defaults(tmp_path: Path) -> None:
    commands = _commands(_section("2. "))
    assert commands[0].startswith("MANIFEST=")
    manifest = tmp_path / "mine" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("sid,image\ns1,s1.nii.gz\n", encoding="utf-8")
    parser = build_parser()
    stages = []
    for line in commands[1:]:
        argv = shlex.split(line.replace('"$MANIFEST"', str(manifest)))
        assert argv[0] == "copd-ifm"
        args = parser.parse_args(argv[1:])
        stages.append(args.stage)
    assert stages == ["preprocess", "pretrain", "pretrain", "pretrain", "extract", "extract", "extract", "evaluate"]
    # the same stages and flags as the section run verbatim above, with the user's manifest and run names
    demo = [shlex.split(c)[1:] for c in _commands(_section("1. "))[1:]]
    mine = [shlex.split(c.replace('"$MANIFEST"', "M"))[1:] for c in commands[1:]]
    assert [[a for a in argv if a.startswith("--")] for argv in mine] == \
        [[a for a in argv if a.startswith("--")] + (["--workers"] if argv[0] == "preprocess" else []) for argv in demo]
    cohort = resolve_cohort(str(manifest))
    assert (cohort.spacing_mm, cohort.patch_size, cohort.pretrain_overrides) == (1.0, 32, {})
    # the same manifest written by `copd-ifm synth` (synth.json beside it) gets the demo's settings instead
    (manifest.parent / "synth.json").write_text('{"spacing_mm": 2.0, "n": 1, "seed": 0}', encoding="utf-8")
    synthetic = resolve_cohort(str(manifest))
    assert (synthetic.spacing_mm, synthetic.patch_size) == (2.0, 16)
    assert synthetic.pretrain_overrides["model.encoder"] == "compact"


def test_the_readme_links_the_walkthrough() -> None:
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "docs/walkthrough.md" in readme.split("## ", 1)[0]
