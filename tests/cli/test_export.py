"""``copd-ifm export``, ``copd_ifm.load_encoder`` and ``extract --encoder`` on tiny real runs."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import copd_ifm
from copd_ifm.cli import main
from copd_ifm.context.train import pretrain, resolve_pretrain_config
from copd_ifm.ct.store import PatchStore
from copd_ifm.errors import UserError
from copd_ifm.evaluation.extract import extract_features, extract_with_encoder
from copd_ifm.evaluation.features import read_feature_sets
from natural_images.train import pretrain as vision_pretrain
from tests.context.test_train import FAST
from tests.vision.test_datasets import _tiny, write_cifar10

pytestmark = pytest.mark.slow   # trains and exports a CT and a vision run


@pytest.fixture(scope="module")
def ct_export(tiny_cohort, tmp_path_factory):
    """A 1-epoch CT run on the tiny cohort, exported with TorchScript through the CLI."""
    root = tmp_path_factory.mktemp("ct_export")
    cfg = resolve_pretrain_config("ifm", tiny_cohort, overrides=[*FAST, "schedule.epochs=1"])
    run = pretrain(tiny_cohort, cfg, root / "run")
    code = main(["export", "--run", str(run), "--out", str(root / "enc"), "--format", "torchscript",
                 "--data-license", "CC0-1.0 (synthetic phantoms)"])
    assert code == 0
    return run, root / "enc"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ct_export_folder_holds_weights_settings_card_and_sums(ct_export, tiny_cohort):
    run, enc = ct_export
    names = {p.name for p in enc.iterdir()}
    assert names == {"encoder.safetensors", "encoder.json", "MODEL_CARD.md", "README.md", "SHA256SUMS",
                     "encoder.torchscript.pt"}
    sums = dict(reversed(line.split("  ")) for line in (enc / "SHA256SUMS").read_text(encoding="utf-8").splitlines())
    assert sums == {n: _sha256(enc / n) for n in names - {"SHA256SUMS"}}
    spec = json.loads((enc / "encoder.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert spec["format_version"] == 1 and spec["copd_ifm_version"] == copd_ifm.__version__
    assert spec["run"]["config_hash"] == summary["config_hash"]
    assert spec["store"]["spacing_mm"] == 4.0 and spec["store"]["patch_size"] == 8
    assert spec["store"]["landmark_step_mm"] == 40.0 and spec["input"]["hu_window"] == [-1024, 240]
    landmarks = np.load(tiny_cohort.store_path / "landmarks.npy")
    assert spec["landmarks"]["count"] == len(landmarks)
    assert np.array_equal(np.array(spec["landmarks"]["atlas_corners"]), landmarks)
    tensors = load_file(str(enc / "encoder.safetensors"))
    assert not any(k.startswith(("patch.", "graph.")) for k in tensors)          # no MoCo heads, queues, keys
    assert {"landmark_coords", "edge_index"} <= set(tensors)
    card = (enc / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "loss.epsilon" in card and "ε = 0.1" in card and "CC0-1.0 (synthetic phantoms)" in card
    assert f"cohort size: {len(PatchStore(tiny_cohort.store_path))} subjects" in card


def test_loaded_encoder_reads_no_pickle_and_matches_the_traced_copy(ct_export, monkeypatch):
    _, enc = ct_export
    traced = torch.jit.load(str(enc / "encoder.torchscript.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading an exported encoder")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    encoder, spec = copd_ifm.load_encoder(enc)
    assert not encoder.training and spec["kind"] == "ct-context"
    patches = torch.empty(spec["landmarks"]["count"], 1, 8, 8, 8).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nodes, feats = encoder(patches, encoder.edge_index)
        t_nodes, t_feats = traced(patches, encoder.edge_index)
    assert nodes.shape == feats.shape == (spec["landmarks"]["count"], 16)
    assert torch.allclose(nodes, t_nodes, atol=1e-5) and torch.allclose(feats, t_feats, atol=1e-5)
    # The loaded module is an ordinary one: it can be fine-tuned (gradients reach the first convolution).
    nodes, _ = encoder.train()(patches, encoder.edge_index)
    nodes.pow(2).sum().backward()
    first = next(p for p in encoder.patch_encoder.parameters() if p.dim() == 5)
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_exported_encoder_gives_the_runs_features_and_embeds_a_new_cohort(ct_export, tiny_cohort, tmp_path):
    from copd_ifm.cohort.synthetic import generate_cohort

    run, enc = ct_export
    by_run = read_feature_sets(extract_features(run, out=tmp_path / "run.parquet", device="cpu", workers=0))
    by_enc = read_feature_sets(extract_with_encoder(enc, tiny_cohort, tmp_path / "enc.parquet", device="cpu",
                                                    workers=1))
    assert set(by_run) == set(by_enc) == {"run/graph", "run/patch"}
    for name in by_run:
        assert list(by_enc[name].index) == list(by_run[name].index)
        assert np.allclose(by_enc[name].to_numpy(), by_run[name].to_numpy(), atol=1e-5)
    # A cohort the encoder never saw, given as a bare manifest (defaults: 1 mm, 32³): preprocessed at 4 mm, 8³.
    manifest = generate_cohort(tmp_path / "new", n=3, seed=11, spacing_mm=4.0, workers=1)
    store = tmp_path / "new_store"
    code = main(["extract", "--encoder", str(enc), "--cohort", str(manifest), "--store", str(store),
                 "--out", str(tmp_path / "new.parquet"), "--device", "cpu", "--workers", "1"])
    assert code == 0
    new = read_feature_sets(tmp_path / "new.parquet")
    assert sorted(new["run/graph"].index) == sorted(pd.read_csv(manifest)["sid"].astype(str))
    assert new["run/graph"].shape == (3, 16) and np.isfinite(new["run/patch"].to_numpy()).all()
    built = yaml.safe_load((store / "config.yaml").read_text(encoding="utf-8"))
    assert (built["spacing_mm"], built["patch_size"], built["landmark_step_mm"]) == (4.0, 8, 40.0)


def test_store_with_other_settings_and_newer_format_are_one_line(ct_export, tiny_cohort, tmp_path, capsys):
    _, enc = ct_export
    other = tmp_path / "other_store"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(
        (tiny_cohort.store_path / "config.yaml").read_text(encoding="utf-8")), "spacing_mm": 2.0}), encoding="utf-8")
    with pytest.raises(UserError, match=r"spacing_mm=2\.0 but encoder .* needs spacing_mm=4\.0.*--store"):
        extract_with_encoder(enc, tiny_cohort, tmp_path / "x.parquet", store=other, device="cpu")
    newer = tmp_path / "newer"
    newer.mkdir()
    for p in enc.iterdir():
        (newer / p.name).write_bytes(p.read_bytes())
    spec = json.loads((newer / "encoder.json").read_text(encoding="utf-8"))
    (newer / "encoder.json").write_text(json.dumps({**spec, "format_version": 2}), encoding="utf-8")
    code = main(["extract", "--encoder", str(newer), "--cohort", str(tiny_cohort.manifest_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "format version 2" in err and "upgrade copd-ifm" in err
    from copd_ifm.contrastive.export import write_sums

    (newer / "encoder.json").write_text(json.dumps({**spec, "model": {**spec["model"], "feat_dim": 32}}), encoding="utf-8")
    with pytest.raises(UserError, match="does not fit the model in encoder.json"):
        copd_ifm.load_encoder(write_sums(newer))        # consistent sums, inconsistent folder
    (newer / "encoder.json").write_text(json.dumps(spec), encoding="utf-8")
    write_sums(newer)
    weights = bytearray((newer / "encoder.safetensors").read_bytes())
    weights[-1] ^= 1
    (newer / "encoder.safetensors").write_bytes(bytes(weights))
    with pytest.raises(UserError, match="SHA-256 differs"):
        copd_ifm.load_encoder(newer)
    with pytest.raises(UserError, match="not an empty folder"):
        main(["export", "--run", str(ct_export[0]), "--out", str(newer), "--debug"])


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    """A 1-epoch SimCLR ResNet-18 (width 1, CIFAR stem) on tiny CIFAR-10 files."""
    root = tmp_path_factory.mktemp("vision_export")
    write_cifar10(root / "data")
    vision_pretrain(_tiny(root / "data", "cifar10", **{"epochs": 1, "knn.every": 0, "data.verify": False}),
                    root / "run")
    return root / "run"


def test_vision_export_loads_into_plain_torchvision(vision_run, tmp_path):
    import torchvision

    assert main(["export", "--run", str(vision_run), "--out", str(tmp_path / "enc"), "--format", "torchscript"]) == 0
    backbone, spec = copd_ifm.load_encoder(tmp_path / "enc")
    assert spec["kind"] == "vision" and spec["torchvision"]["compatible"] and spec["model"]["stem"] == "cifar"
    assert spec["input"]["image_size"] == 8 and spec["input"]["mean"] == [0.4914, 0.4822, 0.4465]
    net = torchvision.models.resnet18()                       # the stated changes, nothing of copd-ifm
    net.fc = nn.Identity()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.load_state_dict(load_file(str(tmp_path / "enc" / "encoder.safetensors")))
    from natural_images.run import load_encoder as run_encoder

    trained, _ = run_encoder(vision_run)
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = trained(images)
        assert want.shape == (4, 512)
        assert torch.allclose(net.eval()(images), want, atol=1e-5)
        assert torch.allclose(backbone(images), want, atol=1e-5)
        assert torch.allclose(torch.jit.load(str(tmp_path / "enc" / "encoder.torchscript.pt"))(images), want, atol=1e-5)


def test_onnx_without_its_extra_is_one_line_and_writes_nothing(ct_export, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code = main(["export", "--run", str(ct_export[0]), "--out", str(tmp_path / "o"), "--format", "onnx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "onnxruntime" in err and "copd-ifm[onnx]" in err
    assert not (tmp_path / "o").exists()


def test_onnx_export_matches_eager(ct_export, vision_run, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", "--run", str(ct_export[0]), "--out", str(tmp_path / "ct"), "--format", "onnx"]) == 0
    encoder, spec = copd_ifm.load_encoder(tmp_path / "ct")
    patches = torch.empty(spec["landmarks"]["count"], 1, 8, 8, 8).uniform_(-1, 1, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(tmp_path / "ct" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"patches": patches.numpy(), "edge_index": encoder.edge_index.numpy()})
    with torch.no_grad():
        want = encoder(patches, encoder.edge_index)
    assert all(np.allclose(g, w.numpy(), atol=1e-5) for g, w in zip(got, want))
    assert main(["export", "--run", str(vision_run), "--out", str(tmp_path / "enc"), "--format", "onnx"]) == 0
    backbone, _ = copd_ifm.load_encoder(tmp_path / "enc")
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "enc" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(session.run(None, {"images": images.numpy()})[0], backbone(images).numpy(), atol=1e-5)


class _FrozenByTrace(nn.Module):
    """Scales by its input's max: a trace turns the example's max into a constant."""

    def forward(self, x):
        return x * float(x.abs().max())


def test_a_trace_that_froze_its_example_is_refused(tmp_path):
    from copd_ifm.contrastive.export import write_traced

    torch.manual_seed(0)
    with pytest.raises(UserError, match="differs from the eager one"):
        write_traced(tmp_path, "torchscript", _FrozenByTrace(), (torch.full((4, 64), 0.5),), ["x"], ["y"])
    assert write_traced(tmp_path, "torchscript", nn.Linear(64, 3), (torch.full((4, 64), 0.5),), ["x"], ["y"]) <= 1e-5
