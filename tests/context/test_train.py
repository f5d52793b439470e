"""Pretraining on a tiny real patch store: learning, exact resume, ε = 0, errors, DDP, extract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from copd_ifm.cli import main
from copd_ifm.context import train as T
from copd_ifm.context.train import pretrain, resolve_pretrain_config
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.errors import UserError
from copd_ifm.evaluation.extract import extract_features
from copd_ifm.evaluation.features import read_feature_sets

FAST = ["model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
        "moco.graph_queue=8", "moco.momentum=0.9", "schedule.patch_batch=4", "schedule.graph_batch=4",
        "schedule.landmarks_per_epoch=6", "schedule.graph_subepochs=1", "schedule.graph_views=feature",
        "workers=0", "device=cpu", "log_every=1", "optim.lr=0.05"]


def _cfg(cohort, config="ifm", extra=()):
    return resolve_pretrain_config(config, cohort, overrides=[*FAST, *extra])


def _history(run: Path) -> list[dict]:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))["history"]


def test_training_lowers_the_loss(tiny_cohort, tmp_path):
    cfg = _cfg(tiny_cohort, extra=["schedule.epochs=6", "schedule.landmarks_per_epoch=3",
                                   "schedule.graph_subepochs=3"])
    run = pretrain(tiny_cohort, cfg, tmp_path / "run")
    hist = _history(run)
    assert hist[-1]["graph_loss"] < hist[0]["graph_loss"]
    assert hist[-1]["patch_loss"] < hist[0]["patch_loss"]
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file() and (run / "tb").is_dir()


def test_resume_reproduces_uninterrupted_run(tiny_cohort, tmp_path, monkeypatch):
    cfg = _cfg(tiny_cohort, extra=["schedule.epochs=2", "schedule.graph_views=patch"])
    full = _history(pretrain(tiny_cohort, cfg, tmp_path / "full"))

    original = Checkpointer.save

    def save_then_die(self, state):
        original(self, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cohort, cfg, tmp_path / "killed")
    monkeypatch.setattr(Checkpointer, "save", original)
    resumed = _history(pretrain(tiny_cohort, cfg, tmp_path / "killed", resume=True))
    # summary.json keeps the whole history: epoch 1 from the killed session, epoch 2 from the resumed one.
    assert [h["epoch"] for h in resumed] == [1, 2]
    for key in ("patch_loss", "patch_acc", "graph_loss", "graph_acc"):
        assert resumed[1][key] == full[1][key], key


def test_resume_of_a_finished_run_says_already_finished(tiny_cohort, tmp_path, capsys):
    cfg = _cfg(tiny_cohort, extra=["schedule.epochs=1"])
    first = _history(pretrain(tiny_cohort, cfg, tmp_path / "run"))
    capsys.readouterr()
    again = _history(pretrain(tiny_cohort, cfg, tmp_path / "run", resume=True))
    out = capsys.readouterr().out
    assert "already finished (1/1 epochs); nothing to train" in out and "resuming" not in out
    assert again == first


def test_ifm_at_epsilon_zero_equals_baseline(tiny_cohort, tmp_path):
    base = _history(pretrain(tiny_cohort, _cfg(tiny_cohort, "baseline", ["schedule.epochs=1"]), tmp_path / "b"))
    ifm0 = _history(pretrain(tiny_cohort, _cfg(tiny_cohort, "ifm", ["schedule.epochs=1", "loss.epsilon=0"]),
                             tmp_path / "i"))
    for key in ("patch_loss", "graph_loss"):
        assert np.isclose(base[0][key], ifm0[0][key], rtol=1e-6), key


def test_errors_are_one_line_with_a_fix(tiny_cohort, tmp_path, capsys):
    wrong = tiny_cohort.__class__(**{**tiny_cohort.__dict__, "patch_size": 16})
    with pytest.raises(UserError, match="patch_size=8"):
        T.open_store(wrong)
    empty = tiny_cohort.__class__(**{**tiny_cohort.__dict__, "store": str(tmp_path / "none")})
    with pytest.raises(UserError, match="copd-ifm preprocess"):
        T.open_store(empty)
    run = tmp_path / "r"
    pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1"]), run)
    with pytest.raises(UserError, match="--resume"):
        pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1"]), run)
    code = main(["pretrain", "--cohort", "demo", "--config", "no-such-config"])
    assert code == 2 and "no-such-config" in capsys.readouterr().err


def test_extract_writes_graph_and_patch_features(tiny_cohort, tmp_path):
    run = pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1"]), tmp_path / "run")
    path = extract_features(run, device="cpu", workers=0)
    sets = read_feature_sets(path)
    assert set(sets) == {"run/graph", "run/patch"}
    store_sids = sorted(pd.read_csv(Path(tiny_cohort.store_path) / "index.csv", dtype=str)
                        .query("status == 'ok'")["sid"])
    for frame in sets.values():
        assert sorted(frame.index) == store_sids and frame.shape[1] == 16
        assert np.isfinite(frame.to_numpy()).all()
    # Same weights, same features: extraction is deterministic (eval mode, no augmentation).
    again = read_feature_sets(extract_features(run, out=tmp_path / "again.parquet", device="cpu", workers=0))
    assert np.allclose(again["run/graph"].to_numpy(), sets["run/graph"].to_numpy(), atol=1e-6)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_gloo_pretraining(tiny_cohort, tmp_path):
    overrides = [a for o in [*FAST, "schedule.epochs=1", "schedule.landmarks_per_epoch=2"] for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "copd_ifm",
           "pretrain", "--cohort", str(Path(tiny_cohort.store_path).parent / "tiny.yaml"),
           "--out", str(tmp_path / "ddp"), "--device", "cpu", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text(encoding="utf-8"))
    assert summary["world_size"] == 2 and np.isfinite(summary["history"][0]["patch_loss"])


def test_resume_uses_the_saved_config_and_refuses_drift(tiny_cohort, tmp_path, capsys):
    run = pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1"]), tmp_path / "run")
    saved = (run / "config.yaml").read_bytes()
    capsys.readouterr()  # drop the training run's progress bars
    code = main(["pretrain", "--out", str(run), "--resume", "--ifm-eps", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "loss.epsilon: saved 0.1, given 0.5" in err and len(err.strip().splitlines()) == 1, err
    assert (run / "config.yaml").read_bytes() == saved  # provenance untouched
    code = main(["pretrain", "--out", str(run), "--resume", "--epochs", "2"])
    assert code == 2 and "schedule.epochs: saved 1, given 2" in capsys.readouterr().err
    # --extend: the same run trained on to 2 epochs, its saved config says so.
    assert main(["pretrain", "--out", str(run), "--extend", "--epochs", "2"]) == 0
    assert [h["epoch"] for h in _history(run)] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["pretrain"]["schedule"]["epochs"] == 2


def test_checkpoint_with_code_is_refused_and_runs_nothing(tiny_cohort, tmp_path):
    import torch

    run = pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1"]), tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Payload()}, run / "checkpoint.pt")
    with pytest.raises(UserError, match="refused"):
        Checkpointer(run).load()
    with pytest.raises(UserError, match="refused"):
        extract_features(run, device="cpu", workers=0)
    assert not marker.exists()


def test_subject_graphs_train_and_extract(tiny_cohort, tmp_path):
    """``graph: subject``: each subject's overlap graph reaches the graph level (patch and feature views) and
    extraction; the graph features then differ from a lattice run's with the same weights."""
    from copd_ifm.context.data import subject_adjacency
    from copd_ifm.ct.store import PatchStore

    store = PatchStore(tiny_cohort.store_path)
    adjacency = subject_adjacency(store, [0, 1])
    for g, sid in enumerate(store.sids[:2]):
        edges = store.subject_graph(sid)
        assert adjacency[g].sum() == edges.shape[1] and bool(adjacency[g][edges[0], edges[1]].all())
    for views in ("patch", "feature"):
        run = pretrain(tiny_cohort, _cfg(tiny_cohort, extra=["schedule.epochs=1", "graph=subject",
                                                             f"schedule.graph_views={views}"]), tmp_path / views)
        assert np.isfinite(_history(run)[0]["graph_loss"])
    subject = read_feature_sets(extract_features(run, device="cpu", workers=0))["feature/graph"]
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["pretrain"]["graph"] = "lattice"
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    lattice = read_feature_sets(extract_features(run, out=tmp_path / "lattice.parquet", device="cpu",
                                                 workers=0))["feature/graph"]
    assert not np.allclose(subject.to_numpy(), lattice.to_numpy())
