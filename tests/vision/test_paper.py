"""The paper's read-outs on a tiny real run: IFM neighbour grid (Sec. 3.1) and robust features (Sec. 4.3)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from PIL import Image

from copd_ifm.cli import main
from copd_ifm.contrastive.neighbours import perturbed_neighbours
from natural_images.augment import eval_transform, train_transform
from natural_images.datasets import build_dataset, dataset_spec
from natural_images.features import extract_features
from natural_images.linear import fit_linear, linear_readout
from natural_images.robust import fgsm_to_target, random_targets
from natural_images.run import load_encoder, load_model, load_vision_config
from natural_images.train import pretrain
from tests.helpers import one_thread


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One SimCLR epoch (cpu_tiny, 16-px) on 20 tiny CIFAR-10 images in the real pickle format."""
    from tests.vision.test_datasets import write_cifar10

    root = tmp_path_factory.mktemp("paper")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("COPD_IFM_HOME", str(root / "home"))
        exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731
        mp.setattr(torchvision.datasets.cifar, "check_integrity", exists)
        write_cifar10(root / "data")
        config = load_vision_config("cpu_tiny", overrides=[f"data.root={root / 'data'}", "epochs=1", "knn.every=0",
                                                           "linear.epochs=30"])
        pretrain(config, root / "run")
        yield root / "run"


def test_perturbed_neighbours_on_a_hand_made_circle():
    angles = torch.arange(12) * (2 * math.pi / 12)
    bank = torch.stack([angles.cos(), angles.sin()], 1).double()
    at = lambda deg: torch.tensor([[math.cos(math.radians(deg)), math.sin(math.radians(deg))]]).double()  # noqa: E731
    v, pos, neg = at(40), bank[[1]], bank[[6]]  # anchor between items 1 (30°) and 2 (60°); negative at 180°
    found = perturbed_neighbours(v, pos, neg, bank, [0.0, 1.0, 2.0])
    for name, key in (("pos", lambda e: pos - e * v), ("neg", lambda e: neg + e * v)):
        for c, e in enumerate([0.0, 1.0, 2.0]):
            k = key(e)[0]
            brute = max(range(12), key=lambda i: float(bank[i] @ k) / float(k.norm()))
            assert int(found[f"{name}_index"][0, c]) == brute
            assert float(found[f"{name}_cos"][0, c]) == pytest.approx(float(bank[brute] @ v[0]))
    # By hand: v⁺ − v points at −55° (item 10 at 300°), v⁺ − 2v at 230° (item 8): away from the anchor;
    # v⁻ + v at 110° (item 4 at 120°), v⁻ + 2v at 67.5° (item 2 at 60°): towards it.
    assert found["pos_index"][0].tolist() == [1, 10, 8]
    assert found["neg_index"][0].tolist() == [6, 4, 2]


@pytest.mark.parametrize("command, doc, other", [
    (["vision", "visualize-ifm"], {"cohort": {"name": "demo"}, "pretrain": {"seed": 0}}, "copd-ifm visualize-ifm"),
    (["visualize-ifm"], {"method": "simclr"}, "copd-ifm vision visualize-ifm"),
])
def test_each_visualize_ifm_refuses_the_other_kind_of_run_naming_its_command(command, doc, other, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert main([*command, "--run", str(run), "--out", str(tmp_path / "vis")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"use `{other} --run {run}`" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "vis").exists()


@pytest.mark.slow
def test_visualize_ifm_cli_grid_and_eps_zero_retrieves_the_positive_itself(tiny_run, capsys):
    out = tiny_run / "vis"
    assert main(["vision", "visualize-ifm", "--run", str(tiny_run), "--eps", "0.5,2", "--anchors", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "ifm_neighbours.png" in capsys.readouterr().out
    result = json.loads((out / "ifm_neighbours.json").read_text(encoding="utf-8"))
    assert result["eps"] == [0.0, 0.5, 2.0] and result["bank_size"] == 20
    assert [row[0] for row in result["pos_index"]] == result["anchor_index"] == [0, 10, 19]
    assert [row[0] for row in result["neg_index"]] == result["negative_index"]
    assert all(j != i for i, j in zip(result["anchor_index"], result["negative_index"]))
    # Brute force with the run's own pieces, one image at a time: the seeded anchor views, the bank, each ε.
    model, run_cfg = load_model(tiny_run)
    spec = dataset_spec("cifar10")
    bank_set = build_dataset(run_cfg.data, "train", eval_transform(16, 1.0, spec.mean, spec.std))
    raw = build_dataset(run_cfg.data, "train")
    augment = train_transform(run_cfg.augment, "simclr", 16, spec.mean, spec.std)
    torch.manual_seed(0)
    views = [augment(raw[i][0]) for i in result["anchor_index"]]
    with torch.no_grad():
        bank = torch.cat([model.project(bank_set[i][0][None]) for i in range(len(bank_set))])
        anchors = torch.cat([model.project(view[None]) for view in views])
    for a, (i, j) in enumerate(zip(result["anchor_index"], result["negative_index"])):
        v = anchors[a]
        for c, e in enumerate(result["eps"]):
            for name, key in (("pos", bank[i] - e * v), ("neg", bank[j] + e * v)):
                cos = [float(F.cosine_similarity(bank[b], key, dim=0)) for b in range(len(bank))]
                assert result[f"{name}_index"][a][c] == int(np.argmax(cos))
                assert result[f"{name}_cos"][a][c] == pytest.approx(float(bank[int(np.argmax(cos))] @ v), abs=1e-5)
    with Image.open(out / "ifm_neighbours.png") as png:
        assert png.size[0] > 300 and png.size[1] > 600  # 4 columns, 6 rows of thumbnails


@pytest.mark.slow
def test_fgsm_flips_the_probe_and_stays_in_range(tiny_run):
    encoder, run_cfg = load_encoder(tiny_run)
    spec = dataset_spec("cifar10")
    dataset = build_dataset(run_cfg.data, "train", eval_transform(16, 1.0, spec.mean, spec.std))
    x_train, y_train = extract_features(encoder, dataset, 64, 0, torch.device("cpu"))
    probe, _ = fit_linear(x_train, y_train[:, 0], 4, run_cfg.linear)
    probe.eval()
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = random_targets(y_train[:, 0], 4, seed=0)
    assert torch.all(targets != y_train[:, 0]) and targets.max() < 4
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    low, high = -mean / std, (1 - mean) / std
    x_adv, flipped, steps = fgsm_to_target(encoder, probe, images, targets, 0.05 / std, low, high, 2)
    assert 10 <= flipped.sum() < len(images)  # most flip within two steps, not all
    with torch.no_grad():
        for i in range(len(images)):  # brute force: one image at a time
            pred = int(probe(encoder(x_adv[i:i + 1])).argmax())
            assert (pred == int(targets[i])) == bool(flipped[i])
            drift = ((x_adv[i] - images[i]).abs() * std[:, None, None]).max().item()
            assert drift <= 0.05 * int(steps[i]) + 1e-5
            assert torch.all(x_adv[i] >= low[:, None, None] - 1e-6) and torch.all(x_adv[i] <= high[:, None, None] + 1e-6)
    assert torch.all(steps[~flipped] == 2)


@pytest.mark.slow
def test_robust_cli_writes_consistent_json_csv_and_plot(tiny_run, capsys):
    out = tiny_run / "robust"
    assert main(["vision", "robust", "--run", str(tiny_run), "--fgsm-eps", "0.05", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "clean test top-1: D" in capsys.readouterr().out
    result = json.loads((out / "robust.json").read_text(encoding="utf-8"))
    table = pd.read_csv(out / "robust.csv").set_index("dataset")
    examples = pd.read_csv(out / "robust_examples.csv")
    assert result["train_size"] == 20 and result["test_size"] == 8
    assert result["flipped"] + result["not_flipped"] == 20 and result["flipped"] == int(examples["flipped"].sum())
    assert table.loc["D", "examples"] == 20 and table.loc["D_R", "examples"] == table.loc["D_NR", "examples"] == result["flipped"]
    for name in ("D", "D_R", "D_NR"):
        assert table.loc[name, "test_top1"] == pytest.approx(result[name])
        assert 100 * np.round(result[name] / 100 * 8) / 8 == pytest.approx(result[name])  # k of 8 test images
    assert (examples["label"] != examples["target"]).all()
    assert (examples.loc[~examples["flipped"], "steps"] == 20).all()
    # D is the run's own linear read-out: same features, settings and seed.
    assert result["D"] == pytest.approx(linear_readout(tiny_run, device="cpu")["top1"]["class"])
    assert (out / "robust.png").stat().st_size > 5000
    # One FGSM step: some examples never flip; they are counted and left out of D_R and D_NR.
    assert main(["vision", "robust", "--run", str(tiny_run), "--fgsm-eps", "0.05", "--max-steps", "1",
                 "--out", str(out.parent / "robust1"), "--device", "cpu"]) == 0
    short = json.loads((out.parent / "robust1" / "robust.json").read_text(encoding="utf-8"))
    table = pd.read_csv(out.parent / "robust1" / "robust.csv").set_index("dataset")
    assert 0 < short["not_flipped"] < 20 and table.loc["D_R", "examples"] == short["flipped"] == 20 - short["not_flipped"]
    assert short["D"] == result["D"]
