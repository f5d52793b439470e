"""The one run-folder contract (CT and vision through the same function), the DDP session, ε as ``loss.epsilon``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import yaml

from copd_ifm import config as cfg_io
from copd_ifm.context import train as ct_train
from copd_ifm.context.config import PretrainConfig
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.rundir import EPSILON_KEY, RunContract, recorded_epsilon, resume_source, start_run
from copd_ifm.errors import UserError
from natural_images import train as vision_train
from natural_images.config import VisionConfig
from natural_images.run import default_config_name, update_summary


def _ct(changes: dict[str, Any]) -> PretrainConfig:
    return cfg_io.from_dict(PretrainConfig, cfg_io.apply_overrides(cfg_io.to_dict(PretrainConfig()), changes))


def _vision(changes: dict[str, Any]) -> VisionConfig:
    return cfg_io.from_dict(VisionConfig, cfg_io.apply_overrides(cfg_io.to_dict(VisionConfig()), changes))


# (contract, config builder, whole config.yaml of a config, a runtime field, the epochs field)
HALVES = {
    "ct": (ct_train.CONTRACT, _ct, lambda c: {"pretrain": cfg_io.to_dict(c)}, "workers", "schedule.epochs"),
    "vision": (vision_train.CONTRACT, _vision, cfg_io.to_dict, "data.workers", "epochs"),
}


@pytest.fixture(params=sorted(HALVES))
def half(request) -> tuple[RunContract, Callable[[dict], Any], Callable[[Any], dict], str, str]:
    return HALVES[request.param]


def _start(run: Path, half, changes: dict[str, Any], resume: bool = False, extend: bool = False) -> Path:
    contract, build, document, _, _ = half
    config = build(changes)
    return start_run(run, config, contract, resume, extend, document=document(config))


def _started(tmp_path: Path, half, changes: dict[str, Any]) -> Path:
    """A run folder as pretraining leaves it after its first epoch: config.yaml and a checkpoint."""
    run = _start(tmp_path / "run", half, changes)
    Checkpointer(run).save({"epoch": 1})
    return run


def _saved(run: Path, half) -> dict[str, Any]:
    doc = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return cfg_io.flatten(doc[half[0].section] if half[0].section else doc)


def test_a_fresh_run_writes_its_resolved_config_and_refuses_a_second_start(tmp_path, half):
    contract, build, document, _, epochs = half
    run = _start(tmp_path / "run", half, {epochs: 3, "loss.epsilon": 0.2})
    config = build({epochs: 3, "loss.epsilon": 0.2})
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) == document(config)
    with pytest.raises(UserError, match="--resume: no checkpoint in .*drop --resume"):
        _start(tmp_path / "other", half, {}, resume=True)
    Checkpointer(run).save({"epoch": 1})
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        _start(run, half, {epochs: 3, "loss.epsilon": 0.2})


def test_resume_refuses_a_changed_field_in_one_line_and_keeps_the_saved_config(tmp_path, half):
    _, _, _, _, epochs = half
    run = _started(tmp_path, half, {epochs: 3, "loss.epsilon": 0.1})
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(UserError) as caught:
        _start(run, half, {epochs: 3, "loss.epsilon": 0.5}, resume=True)
    message = str(caught.value)
    assert "loss.epsilon: saved 0.1, given 0.5" in message and "drop those flags" in message
    assert len(message.splitlines()) == 1
    assert (run / "config.yaml").read_bytes() == before
    # The same config resumes.
    _start(run, half, {epochs: 3, "loss.epsilon": 0.1}, resume=True)


def test_runtime_fields_may_change_on_resume_and_are_saved(tmp_path, half):
    _, _, _, runtime, epochs = half
    run = _started(tmp_path, half, {epochs: 3, runtime: 2})
    _start(run, half, {epochs: 3, runtime: 0}, resume=True)
    assert _saved(run, half)[runtime] == 0


def test_extend_raises_the_epochs_only_upwards(tmp_path, half):
    _, _, _, _, epochs = half
    run = _started(tmp_path, half, {epochs: 3})
    with pytest.raises(UserError, match=f"{epochs}: saved 3, given 5"):
        _start(run, half, {epochs: 5}, resume=True)
    with pytest.raises(UserError, match="--extend: --epochs 2 is fewer than the run's 3; give more epochs"):
        _start(run, half, {epochs: 2}, resume=True, extend=True)
    _start(run, half, {epochs: 5}, resume=True, extend=True)
    assert _saved(run, half)[epochs] == 5


def test_resume_of_a_folder_without_config_is_refused(tmp_path, half):
    run = _started(tmp_path, half, {})
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match="needs the run's config.yaml, which is missing"):
        _start(run, half, {}, resume=True)
    with pytest.raises(UserError, match="not found; is --out a run folder"):
        resume_source(run)
    with pytest.raises(UserError, match="give --out"):
        resume_source(None)
    with pytest.raises(UserError, match="drop --config"):
        resume_source(run, "cifar10_simclr")


def _one_rank_group(tmp_path: Path) -> Callable[[str], D.DistInfo]:
    """``init_from_env`` that opens a real one-rank gloo group (torchrun's variables would need two processes)."""

    def init(device: str = "auto") -> D.DistInfo:
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        return D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    return init


def test_session_ends_its_group_on_every_exit_and_leaves_a_callers_group(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "init_from_env", _one_rank_group(tmp_path))
    with D.session("cpu") as info:
        assert dist.is_initialized() and info.world_size == 1
    assert not dist.is_initialized()
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with D.session("cpu"):
                raise error
        assert not dist.is_initialized()
    D.init_from_env("cpu")  # the caller's group: an inner session must not end it
    try:
        with D.session("cpu"):
            pass
        assert dist.is_initialized()
    finally:
        D.cleanup()


def test_ct_and_vision_commands_end_their_group_when_they_fail(tmp_path, monkeypatch, tiny_cohort):
    import dataclasses

    from copd_ifm.evaluation.extract import extract_features

    monkeypatch.setattr(D, "init_from_env", _one_rank_group(tmp_path))
    no_store = dataclasses.replace(tiny_cohort, store=str(tmp_path / "none"))
    with pytest.raises(UserError, match="copd-ifm preprocess"):
        ct_train.pretrain(no_store, _ct({"device": "cpu"}), tmp_path / "ct")
    assert not dist.is_initialized()
    with pytest.raises(UserError, match="not a pretrain run folder"):
        extract_features(tmp_path / "no-run", device="cpu")
    assert not dist.is_initialized()
    with pytest.raises(UserError):
        vision_train.pretrain(_vision({"data.root": str(tmp_path / "no-data"), "data.dataset": "trifeature"}),
                              tmp_path / "vision", device="cpu")
    assert not dist.is_initialized()


def test_epsilon_is_read_from_new_and_old_run_folders(tmp_path):
    assert recorded_epsilon({EPSILON_KEY: 0.0, "ifm_eps": 0.3}) == 0.0
    assert recorded_epsilon({"ifm_epsilon": 0.1}) == 0.1  # CT summary / features metadata
    assert recorded_epsilon({"ifm_eps": 0.2}) == 0.2  # vision summary
    assert recorded_epsilon({"epsilon": 0.5}) == 0.5  # CT shortcut study result
    assert recorded_epsilon({"loss": 1.7}) is None
    # A vision run folder of an older version, resumed: its summary keeps one ε, under the new key.
    (tmp_path / "summary.json").write_text(json.dumps({"ifm_eps": 0.2, "method": "moco"}), encoding="utf-8")
    summary = update_summary(tmp_path, **{EPSILON_KEY: 0.2, "epochs_done": 2})
    assert summary == {"method": "moco", EPSILON_KEY: 0.2, "epochs_done": 2}


def test_ct_run_and_features_record_epsilon_as_loss_epsilon(tiny_cohort, tmp_path, one_thread):
    from copd_ifm.evaluation.extract import extract_features
    from copd_ifm.evaluation.features import read_features_meta

    cfg = ct_train.resolve_pretrain_config("ifm", tiny_cohort, overrides=[
        "model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
        "moco.graph_queue=8", "schedule.patch_batch=4", "schedule.graph_batch=4", "schedule.landmarks_per_epoch=2",
        "schedule.graph_subepochs=1", "schedule.epochs=1", "workers=0", "device=cpu"])
    run = ct_train.pretrain(tiny_cohort, cfg, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary[EPSILON_KEY] == 0.1 and "ifm_epsilon" not in summary
    assert summary["epochs"] == summary["epochs_done"] == 1 and summary["world_size"] == 1
    meta = read_features_meta(extract_features(run, device="cpu", workers=0))
    assert meta[EPSILON_KEY] == 0.1 and recorded_epsilon(meta) == 0.1


def test_every_config_class_defaults_to_the_baseline_and_named_configs_set_epsilon():
    assert PretrainConfig().loss.epsilon == VisionConfig().loss.epsilon == 0.0
    for name, eps in (("baseline", 0.0), ("ifm", 0.1), ("ifm_eps0.5", 0.5)):
        data = cfg_io.read_config(cfg_io.named_config("pretrain", name))
        assert data["loss"]["epsilon"] == eps, name  # explicit in the file: the default never decides


def test_adco_without_its_own_config_takes_the_datasets_moco_config():
    assert default_config_name("cifar10", "adco") == "cifar10_adco"
    assert default_config_name("trifeature", "adco") == "trifeature_moco"
    assert default_config_name("folder", "adco") == "folder_moco"


def test_both_pretrain_commands_send_a_resume_without_a_run_folder_to_the_same_line(tmp_path, capsys):
    from copd_ifm.cli import main

    assert main(["pretrain", "--resume"]) == 2
    assert "--resume continues --out RUN_DIR with its saved config.yaml: give --out" in capsys.readouterr().err
    assert main(["vision", "pretrain", "--extend"]) == 2
    assert "--resume continues --out RUN_DIR with its saved config.yaml: give --out" in capsys.readouterr().err
    assert main(["vision", "pretrain", "--resume", "--out", str(tmp_path), "--config", "cpu_tiny"]) == 2
    assert "drop --config" in capsys.readouterr().err
    for argv in (["pretrain", "--resume", "--out", str(tmp_path)], ["vision", "pretrain", "--resume", "--out",
                                                                   str(tmp_path)]):
        assert main(argv) == 2
        assert f"{tmp_path / 'config.yaml'} not found; is --out a run folder" in capsys.readouterr().err
