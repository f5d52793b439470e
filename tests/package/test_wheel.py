"""The wheel works outside the source tree: built, installed into a fresh venv, run from another folder.

The fresh venv sees the current one's dependencies through a ``.pth`` line (nothing is downloaded), but not
its editable copd-ifm: a path line in a ``.pth`` adds a folder to ``sys.path`` without running the
editable install's finder there, and the wheel's own copy sits earlier on the path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO as ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_CT = ["model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
           "moco.graph_queue=8", "schedule.patch_batch=4", "schedule.graph_batch=4",
           "schedule.landmarks_per_epoch=2", "schedule.graph_subepochs=1", "workers=0"]
COHORT = ["spacing_mm=4", "patch_size=8", "landmark_step_mm=40"]

# Run inside the installed venv: every packaged default config of every kind loads with its own loader.
CHECK_CONFIGS = """
import sys
from pathlib import Path
import copd_ifm
from copd_ifm import config as cfg
from copd_ifm.cohort.atlas import ATLAS_MASK
from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.context.train import resolve_pretrain_config
from copd_ifm.studies.outcomes.plan import load_study as load_outcomes
from copd_ifm.studies.shortcut.plan import load_study as load_shortcut
from natural_images.config import VisionConfig
from natural_images.datasets import imagenet100_classes
from natural_images.studies.config import load_study_config
from natural_images.studies.recipes import KINDS, load_recipe
site = Path(sys.argv[1]).resolve()
for path in (copd_ifm.__file__, cfg.CONFIG_DIR, ATLAS_MASK):
    assert site in Path(path).resolve().parents, f"{path} is not the wheel's (under {site})"
assert ATLAS_MASK.is_file() and len(imagenet100_classes()) == 100
names = {kind: sorted(p.stem for p in (cfg.CONFIG_DIR / kind).glob("*.yaml"))
         for kind in ("cohorts", "pretrain", "studies", "vision", "vision/studies")}
for name in names["cohorts"]:
    cohort = resolve_cohort(name)
for name in names["pretrain"]:
    resolve_pretrain_config(name, cohort)
for name in names["studies"]:
    kind, scale = name.split("-", 1)
    {"shortcut": load_shortcut, "outcomes": load_outcomes}[kind](scale)
for name in names["vision"]:
    cfg.load(VisionConfig, cfg.named_config("vision", name))
for name in names["vision/studies"]:
    kind, scale = name.split("-", 1)
    (load_recipe if kind in KINDS else load_study_config)(kind, scale)
print(sum(map(len, names.values())))
"""


def _copy_source(dst: Path) -> Path:
    """The files a wheel is built from (pip builds in place and would leave build/ in the checkout)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("copd_ifm", "natural_images", "configs"):
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    return dst


def _fresh_venv(path: Path) -> Path:
    """A venv without pip whose ``sys.path`` ends with this interpreter's site-packages (the dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, encoding="utf-8").stdout.strip()
    Path(site, "_deps_of_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return Path(site)


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout")
def test_wheel_runs_outside_the_checkout(tmp_path):
    source = _copy_source(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(tmp_path / "dist"), str(source)], check=True)
    wheel = next((tmp_path / "dist").glob("copd_ifm-*.whl"))
    site = _fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp_path / "venv" / "bin" / "python"), "install",
                    "--no-deps", "--no-index", "--quiet", str(wheel)], check=True)
    shutil.rmtree(source)                   # nothing of a source tree is left to fall back on
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "COPD_IFM_CONFIGS"}}
    env.update(OMP_NUM_THREADS="1", COPD_IFM_HOME=str(work / "home"))

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr[-3000:]}"
        return done.stdout

    python, cli = str(tmp_path / "venv" / "bin" / "python"), str(tmp_path / "venv" / "bin" / "copd-ifm")
    n_configs = int(run(python, "-c", CHECK_CONFIGS, str(site)).strip())
    assert n_configs == len(list((ROOT / "configs").rglob("*.yaml")))
    run(cli, "synth", "--out", "ct", "--n", "4", "--spacing", "4", "--workers", "1")
    store = ["--set", f"store={work / 'store'}"]
    run(cli, "preprocess", "--cohort", "ct/manifest.csv", "--workers", "1", *store,
        *(a for o in COHORT for a in ("--set", o)))
    sets = [a for o in [*FAST_CT, *(f"cohort.{c}" for c in COHORT), f"cohort.store={work / 'store'}"]
            for a in ("--set", o)]
    run(cli, "pretrain", "--cohort", "ct/manifest.csv", "--epochs", "1", "--device", "cpu", "--out", "ctrun", *sets)
    assert (work / "ctrun" / "checkpoint.pt").is_file()
    run(cli, "vision", "make-trifeature", "--out", "trifeature", "--size", "16", "--per-combination", "2",
        "--test-per-combination", "1", "--workers", "1")
    out = run(cli, "vision", "pretrain", "--dataset", "trifeature", "--data-root", ".", "--out", "vrun",
              "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--set", "data.limit=16",
              "--set", "knn.every=0", "--set", "model.width=0.25", "--set", "amp=false")
    assert "run folder: vrun (epochs 1/1" in out
    run(cli, "export", "--run", "ctrun", "--out", "ctenc")
    run(cli, "export", "--run", "vrun", "--out", "venc")
    assert run(python, "-c", LOAD_ENCODERS).split() == ["ct-context", "vision", "128"]


LOAD_ENCODERS = """
import torch, copd_ifm
ct, spec = copd_ifm.load_encoder("ctenc")
nodes, feats = ct(torch.zeros(spec["landmarks"]["count"], 1, 8, 8, 8), ct.edge_index)
assert nodes.shape == feats.shape == (spec["landmarks"]["count"], 16)
backbone, vspec = copd_ifm.load_encoder("venc")
print(spec["kind"], vspec["kind"], backbone(torch.zeros(2, 3, 16, 16)).shape[1])
"""
