"""``--dataset folder`` on tiny PNG/JPEG trees, ``--classes``, default configs, width, and dataset error messages."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from copd_ifm.cli import main
from copd_ifm.errors import UserError
from natural_images.backbones import build_backbone
from natural_images.config import VISION_CONFIG_DIR, DataConfig
from natural_images.run import default_config_name, load_vision_config
from natural_images.datasets import available_datasets, build_dataset, image_sizes

from tests.vision.test_datasets import write_cifar10

COLORS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 220)}


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path, one_thread):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))


def write_folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (20, 16)) -> None:
    """``root/{train,val}/<class>/i.{png,jpg}``: even items PNG, odd JPEG; colour = class; ``size`` is (w, h)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, n in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(COLORS[name]) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.{'png' if i % 2 == 0 else 'jpg'}")


def test_folder_dataset_reads_png_and_jpeg_with_sorted_labels_and_its_own_size(tmp_path):
    write_folder(tmp_path, {"dog": 3, "cat": 4, "eel": 2})
    data = DataConfig(dataset="folder", root=str(tmp_path))
    train, val = build_dataset(data, "train"), build_dataset(data, "test")
    assert train.classes == ["cat", "dog", "eel"] and len(train) == 9 and len(val) == 9
    assert sorted(train.targets) == [0] * 4 + [1] * 3 + [2] * 2
    image, label = train[0]                                            # cat/0.png
    assert label == 0 and image.size == (20, 16) and np.asarray(image)[..., 0].mean() > 150
    assert {Path(p).suffix for p, _ in train.samples} == {".png", ".jpg"}
    assert image_sizes(data) == (16, 16)                               # the short side of the first image


def test_classes_file_keeps_the_listed_classes_in_both_splits(tmp_path):
    write_folder(tmp_path / "data", {"cat": 2, "dog": 2, "eel": 2})
    listing = tmp_path / "classes.txt"
    listing.write_text("# my subset\neel\n\ncat\n", encoding="utf-8")
    data = DataConfig(dataset="folder", root=str(tmp_path / "data"), classes=str(listing))
    train, val = build_dataset(data, "train"), build_dataset(data, "test")
    assert train.classes == val.classes == ["cat", "eel"] and len(train) == len(val) == 4
    assert [val[i][1] for i in range(4)] == [0, 0, 1, 1]
    listing.write_text("cat\nfox\n", encoding="utf-8")
    with pytest.raises(UserError, match="1 of the 2 listed class folders are missing \\(first: fox\\)"):
        build_dataset(data, "train")
    listing.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(UserError, match="'cat' is listed twice"):
        build_dataset(data, "train")
    with pytest.raises(UserError, match="applies to folder and imagenet100, not cifar10"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), classes=str(listing)), "train")


def test_cli_pretrain_knn_and_linear_on_an_image_folder(tmp_path, capsys):
    write_folder(tmp_path / "data", {"cat": 6, "dog": 6, "eel": 4})
    listing = tmp_path / "classes.txt"
    listing.write_text("cat\ndog\n", encoding="utf-8")
    run = tmp_path / "run"
    code = main(["vision", "pretrain", "--config", "cpu_tiny", "--dataset", "folder", "--data-root",
                 str(tmp_path / "data"), "--classes", str(listing), "--epochs", "1", "--width", "0.25",
                 "--out", str(run), "--set", "data.crop_size=null", "--set", "data.eval_size=null"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["dataset"] == "folder" and 0 <= summary["knn_top1"]["class"] <= 100
    saved = load_vision_config(str(run / "config.yaml"))
    assert saved.model.width == 0.25 and saved.data.crop_size == saved.data.eval_size == 16
    assert saved.data.classes == str(listing.resolve())
    assert main(["vision", "linear", "--run", str(run), "--epochs", "2"]) == 0
    linear = json.loads((run / "linear.json").read_text(encoding="utf-8"))["folder"]
    assert linear["train_size"] == linear["test_size"] == 12                 # cat + dog only


def test_every_dataset_method_pair_with_a_config_loads_and_unknown_names_are_named(tmp_path):
    for dataset in ("trifeature", "digits-standin", "stl-digits", "folder"):
        for method in ("simclr", "moco"):
            config = load_vision_config(default_config_name(dataset, method))
            assert (config.data.dataset, config.method, config.model.arch, config.epochs) == (
                dataset, method, "resnet18", 200)
    assert load_vision_config("trifeature_simclr").data.crop_size == 128     # no folder: the spec's size
    with pytest.raises(UserError, match=r"unknown dataset 'foo' \(known: .*cifar10.*folder"):
        default_config_name("foo", "simclr")
    with pytest.raises(UserError, match="no default config imagenet100_simclr.yaml .*methods with one: adco, moco"):
        default_config_name("imagenet100", "simclr")
    named = {p.stem.rsplit("_", 1)[0] for p in VISION_CONFIG_DIR.glob("*_*.yaml") if p.stem.endswith(("_simclr", "_moco", "_adco"))}
    assert named <= set(available_datasets())


def test_a_failed_md5_names_the_file_and_leaves_the_data_alone(tmp_path):
    write_cifar10(tmp_path)                                            # tiny files: no official md5 matches
    before = sorted(os.listdir(tmp_path / "cifar-10-batches-py"))
    data = DataConfig(dataset="cifar10", root=str(tmp_path))
    with pytest.raises(UserError) as err:
        build_dataset(data, "train")
    message = str(err.value)
    assert "data_batch_1 fails torchvision's md5 check (6 more file(s) too)" in message
    assert "left untouched" in message and "data.verify=false" in message and "\n" not in message
    assert sorted(os.listdir(tmp_path / "cifar-10-batches-py")) == before
    data.verify = False
    assert len(build_dataset(data, "train")) == 20


def test_width_multiplier_scales_every_stage_and_the_features():
    full, f_full = build_backbone("resnet18", "cifar", 1.0)
    narrow, f_narrow = build_backbone("resnet18", "cifar", 0.25)
    assert (f_full, f_narrow) == (512, 128)
    assert narrow.conv1.out_channels == 16 and narrow.layer1[0].conv1.out_channels == 16
    assert [getattr(narrow, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    # every 3x3 conv has 1/16 of the weights, so the parameter count drops by about 16x
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert 14 < count(full) / count(narrow) < 17
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    wide, f_wide = build_backbone("resnet50", "imagenet", 0.5)
    assert f_wide == 1024 and wide(torch.randn(2, 3, 64, 64)).shape == (2, 1024)


def test_summary_floats_are_rounded_and_the_curves_title_names_k(tmp_path, monkeypatch):
    import pandas as pd

    from natural_images import plots
    from natural_images.run import update_summary

    update_summary(tmp_path, loss=0.1 + 0.2, knn={"class": [100 / 3, float("nan")]}, epochs=3, status="done")
    text = (tmp_path / "summary.json").read_text(encoding="utf-8")
    assert '"loss": 0.3,' in text and "33.3333," in text and '"epochs": 3' in text
    titles = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: titles.extend(
        ax.get_title() for ax in fig.axes))
    table = pd.DataFrame({"epoch": [1, 2], "loss": [5.0, 4.0], "knn_top1_class": [20.0, 30.0]})
    plots.plot_pretrain(table, tmp_path / "curves.png", k=50)
    assert "kNN monitor (k = 50)" in titles


def test_loader_workers_are_capped_at_the_usable_cores(monkeypatch):
    """folder configs ask for 8 loader processes; on 2 cores the loader starts 2 (the config keeps 8)."""
    import os

    from copd_ifm.contrastive.runtime import loader_workers
    from copd_ifm.config import named_config

    assert load_vision_config(str(named_config("vision", "folder_simclr"))).data.workers == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [loader_workers(n) for n in (0, 1, 2, 8)] == [0, 1, 2, 2]
