"""Every vision dataset path on tiny files in the real on-disk formats, through pretrain and linear read-out.

Formats written here: CIFAR-10/100 python pickle batches, STL10 binary files,
tinyImageNet's official folder (train/<wnid>/images + val annotations) and an
ImageNet folder for the ImageNet100 subset. torchvision verifies the md5 of
the official CIFAR/STL10 files on every open; those sums cannot match tiny
files, so the tests swap ``check_integrity`` for an existence check. All
parsing is torchvision's own.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from copd_ifm import config as cfg
from copd_ifm.cli import main
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.contrastive.runtime import seed_everything
from copd_ifm.errors import UserError
from natural_images.config import DataConfig, VisionConfig
from natural_images.run import load_vision_config
from natural_images.datasets import build_dataset, image_sizes, imagenet100_classes, label_names
from natural_images.linear import linear_readout
from natural_images.methods import build_model
from natural_images.train import pretrain
from tests.helpers import one_thread

PALETTE = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]], dtype=np.float64)


@pytest.fixture(autouse=True)
def _fast_and_offline(monkeypatch, tmp_path):
    """One intra-op thread (two shared cores), an isolated data home, md5 → existence check."""
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", exists)
    with one_thread():
        yield


def _images(n: int, size: int, seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, size, size, 3]`` uint8 images whose colour depends on the label, plus labels ``[n]``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = PALETTE[labels % len(PALETTE)]
    pixels = 0.7 * base[:, None, None, :] + rng.uniform(0, 76, (n, size, size, 3))
    return pixels.clip(0, 255).astype(np.uint8), labels


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        images, labels = _images(n, 32, seed=i, classes=4)
        # Row = 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
        _pickle(folder / name, {"batch_label": name, "labels": labels.tolist(),
                                "data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                                "filenames": [f"{name}_{j}.png" for j in range(n)]})
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                      "horse", "ship", "truck"],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072})


def write_cifar100(root: Path, n_train: int = 16, n_test: int = 8) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for seed, name, n in ((0, "train", n_train), (1, "test", n_test)):
        images, labels = _images(n, 32, seed, classes=4)
        _pickle(folder / name, {"batch_label": name, "fine_labels": labels.tolist(),
                                "coarse_labels": (labels // 2).tolist(),
                                "data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                                "filenames": [f"{name}_{j}.png" for j in range(n)]})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})


def write_stl10(root: Path, n_train: int = 8, n_test: int = 8, n_unlabeled: int = 8) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for seed, split, n in ((0, "train", n_train), (1, "test", n_test), (2, "unlabeled", n_unlabeled)):
        images, labels = _images(n, 96, seed, classes=4)
        # STL10 stores each image channel-first and column-major: [n, 3, x, y].
        images.transpose(0, 3, 2, 1).astype(np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")  # 1-based on disk
    (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                       "monkey", "ship", "truck"]) + "\n", encoding="utf-8")
    (folder / "fold_indices.txt").write_text("\n".join(" ".join(map(str, range(n_train))) for _ in range(10)) + "\n", encoding="utf-8")


def _jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def write_tinyimagenet(root: Path, wnids: list[str], n_train: int = 3, n_val: int = 2) -> None:
    base = root / "tiny-imagenet-200"
    (base / "wnids.txt").parent.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n", encoding="utf-8")
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)), encoding="utf-8")
    annotations = []
    for c, wnid in enumerate(wnids):
        images, _ = _images(n_train + n_val, 64, seed=c, classes=1)
        images = (images * 0.4 + PALETTE[c] * 0.6).astype(np.uint8)
        for i in range(n_train):
            _jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", images[i])
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train)), encoding="utf-8")
        for i in range(n_val):
            name = f"val_{c * n_val + i}.JPEG"
            _jpeg(base / "val" / "images" / name, images[n_train + i])
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations), encoding="utf-8")


def write_imagenet(root: Path, wnids: list[str], per_class: int = 1) -> None:
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids):
            images, _ = _images(per_class, 40, seed=c, classes=1)
            for i in range(per_class):
                _jpeg(root / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG",
                      (images[i] * 0.4 + PALETTE[c % 4] * 0.6).astype(np.uint8))


def _tiny(root: Path, dataset: str, method: str = "simclr", **fields) -> VisionConfig:
    """``cpu_tiny`` on 8-px crops (the CLI test runs it unchanged)."""
    items = [f"data.root={root}", f"data.dataset={dataset}", f"method={method}", "data.crop_size=8",
             "data.eval_size=8"]
    items += [f"{k}={json.dumps(v)}" for k, v in fields.items()]
    return load_vision_config("cpu_tiny", overrides=items)


# --- formats ---------------------------------------------------------------------------------


def test_cifar_and_stl10_files_load_through_torchvision(tmp_path):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    write_stl10(tmp_path)
    c10 = torchvision.datasets.CIFAR10(tmp_path, train=True, download=False)
    assert len(c10) == 20 and c10.classes[0] == "airplane"
    image, label = c10[5]
    expected, labels = _images(4, 32, seed=1, classes=4)  # item 5 = data_batch_2, row 1
    assert np.array_equal(np.asarray(image), expected[1]) and label == labels[1]
    assert len(torchvision.datasets.CIFAR10(tmp_path, train=False)) == 8
    c100 = torchvision.datasets.CIFAR100(tmp_path, train=True)
    assert len(c100) == 16 and c100.targets[:5] == [0, 1, 2, 3, 0]
    stl = build_dataset(DataConfig(dataset="stl10", root=str(tmp_path)), "pretrain")
    assert len(stl) == 16 and stl.labels.tolist()[-1] == -1  # train + unlabeled
    image, label = build_dataset(DataConfig(dataset="stl10", root=str(tmp_path)), "test")[3]
    expected, labels = _images(8, 96, seed=1, classes=4)
    assert np.array_equal(np.asarray(image), expected[3]) and label == labels[3]


def _bytes_keys(value):
    """A pickle entry with bytes keys and bytes strings, as some CIFAR re-exports write them."""
    if isinstance(value, dict):
        return {k.encode(): _bytes_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_keys(v) for v in value]
    return value.encode() if isinstance(value, str) else value


@pytest.mark.parametrize("dataset, writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_pickles_with_bytes_keys_read_like_str_keys(tmp_path, dataset, writer):
    writer(tmp_path / "str")
    writer(tmp_path / "bytes")
    for path in (tmp_path / "bytes").rglob("*"):
        if path.is_file():
            entry = pickle.loads(path.read_bytes(), encoding="latin1")
            _pickle(path, _bytes_keys(entry))
    with pytest.raises(KeyError):                                   # torchvision alone
        getattr(torchvision.datasets, dataset.upper())(tmp_path / "bytes", train=True)
    for split in ("train", "test"):
        want = build_dataset(DataConfig(dataset=dataset, root=str(tmp_path / "str")), split)
        got = build_dataset(DataConfig(dataset=dataset, root=str(tmp_path / "bytes")), split)
        assert np.array_equal(got.data, want.data) and got.targets == want.targets
        assert got.classes == want.classes and isinstance(got.classes[0], str)
        assert np.array_equal(np.asarray(got[3][0]), np.asarray(want[3][0])) and got[3][1] == want[3][1]


def test_offline_download_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["vision", "pretrain", "--config", "cpu_tiny", "--dataset", "cifar10", "--download",
                 "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(err) == 1
    assert "download failed" in err[0] and "name resolution" in err[0] and str(tmp_path / "data") in err[0]


def test_tinyimagenet_official_layout_and_imagenet100_subset(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tinyimagenet(tmp_path, wnids)
    data = DataConfig(dataset="tinyimagenet", root=str(tmp_path))
    train, val = build_dataset(data, "train"), build_dataset(data, "test")
    assert len(train) == 9 and len(val) == 6
    assert train.classes == sorted(wnids) and [val[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert image_sizes(data) == (64, 64)

    listed = imagenet100_classes()
    write_imagenet(tmp_path, listed[:100] + ["n99999999"])  # one extra class that must be ignored
    subset = build_dataset(DataConfig(dataset="imagenet100", root=str(tmp_path)), "train")
    assert len(subset.classes) == 100 and "n99999999" not in subset.classes and len(subset) == 100
    assert subset.classes == sorted(listed)
    (tmp_path / "imagenet" / "val" / listed[7]).rename(tmp_path / "imagenet" / "val" / "moved")
    with pytest.raises(UserError, match="1 of the 100 listed class folders are missing"):
        build_dataset(DataConfig(dataset="imagenet100", root=str(tmp_path)), "test")


def test_imagenet100_list_is_100_unique_wnids():
    wnids = imagenet100_classes()
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert all(len(w) == 9 and w.startswith("n") and w[1:].isdigit() for w in wnids)


def test_missing_dataset_is_a_one_line_error_naming_the_folder(tmp_path, capsys):
    code = main(["vision", "pretrain", "--config", "cpu_tiny", "--dataset", "cifar100",
                 "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(tmp_path / "nowhere" / "cifar-100-python") in err[0] and "--download (needs internet)" in err[0]
    with pytest.raises(UserError, match="cannot be downloaded"):
        build_dataset(DataConfig(dataset="imagenet100", root=str(tmp_path), download=True), "train")
    with pytest.raises(UserError, match="unknown"):
        build_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), "train")


# --- pretrain + linear on every format --------------------------------------------------------


def test_cli_pretrain_and_linear_on_cifar10(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["vision", "pretrain", "--config", "cpu_tiny", "--data-root", str(tmp_path / "data"),
                 "--ifm-eps", "0.1", "--epochs", "1", "--out", str(run)])
    assert code == 0
    saved = cfg.read_yaml(run / "config.yaml")
    assert saved["loss"]["epsilon"] == 0.1 and saved["epochs"] == 1 and saved["data"]["dataset"] == "cifar10"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "done" and summary["epochs_done"] == 1 and 0 <= summary["knn_top1"]["class"] <= 100
    assert np.isfinite(summary["loss"]) and (run / "curves.png").stat().st_size > 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert (metrics["key"] == "loss").sum() == 2  # 20 images, batch 8: 2 steps, logged every step
    assert main(["vision", "linear", "--run", str(run), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "cifar10 class: linear top-1" in out
    linear = json.loads((run / "linear.json").read_text(encoding="utf-8"))["cifar10"]
    assert linear["train_size"] == 20 and linear["test_size"] == 8 and linear["linear"]["epochs"] == 3
    table = pd.read_csv(run / "linear.csv")
    assert len(table) == 3 and table["test_top1"].iloc[-1] == pytest.approx(linear["top1"]["class"])
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["linear"]["cifar10"]["class"] == linear["top1"]["class"]
    with pytest.raises(UserError, match="already holds a run"):
        pretrain(load_vision_config(str(run / "config.yaml")), run)


@pytest.mark.parametrize("dataset, method, writer, n_train", [
    ("cifar100", "moco", write_cifar100, 16),
    ("stl10", "simclr", write_stl10, 8),  # pretrains on train + unlabeled (16), reads out on the 8 labelled
    ("tinyimagenet", "moco", lambda root: write_tinyimagenet(root, ["n01443537", "n01629819", "n01641577"]), 9),
    ("imagenet100", "simclr", lambda root: write_imagenet(root, imagenet100_classes()), 16),
])
@pytest.mark.slow
def test_pretrain_and_linear_on_each_format(tmp_path, dataset, method, writer, n_train):
    writer(tmp_path)
    config = _tiny(tmp_path, dataset, method, epochs=1, **{"data.limit": 16, "linear.epochs": 2})
    summary = pretrain(config, tmp_path / "run")
    assert summary["dataset"] == dataset and summary["method"] == method and summary["epochs_done"] == 1
    assert np.isfinite(summary["loss"]) and set(summary["knn_top1"]) == {"class"}
    result = linear_readout(tmp_path / "run")
    assert result["train_size"] == n_train and 0 <= result["top1"]["class"] <= 100
    state = Checkpointer(tmp_path / "run").load()
    if method == "moco":  # the queue advanced by one batch of keys per step
        steps = state["history"][-1]["step"]
        assert int(state["model"]["moco.queue_ptr"][0]) == steps * config.batch_size % config.moco.queue_size
    assert label_names(build_dataset(config.data, "test")) == ["class"]


def _killed_after_first_checkpoint(config: VisionConfig, run: Path, monkeypatch) -> None:
    """Start ``config`` in ``run`` and kill it right after its first checkpoint is written."""

    class Killed(Exception):
        pass

    real_save = Checkpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        raise Killed

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
        pretrain(config, run)
    monkeypatch.setattr(Checkpointer, "save", real_save)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data")
    config = _tiny(tmp_path / "data", "cifar10", "moco", **{"loss.epsilon": 0.1, "knn.every": 0})
    pretrain(config, tmp_path / "full")
    _killed_after_first_checkpoint(config, tmp_path / "killed", monkeypatch)
    assert Checkpointer(tmp_path / "killed").load()["epoch"] == 1
    with pytest.raises(UserError, match="loss.epsilon: saved 0.1, given 0.2"):
        pretrain(_tiny(tmp_path / "data", "cifar10", "moco", **{"loss.epsilon": 0.2, "knn.every": 0}),
                 tmp_path / "killed", resume=True)
    pretrain(config, tmp_path / "killed", resume=True)

    def losses(run: Path) -> list[float]:
        m = pd.read_csv(run / "metrics.csv")
        return m[m["key"] == "loss"].drop_duplicates("step", keep="last")["value"].tolist()

    assert len(losses(tmp_path / "full")) == 4 and losses(tmp_path / "killed") == losses(tmp_path / "full")
    full, resumed = (Checkpointer(tmp_path / r).load() for r in ("full", "killed"))
    assert full["epoch"] == resumed["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in resumed["history"]]


@pytest.mark.slow
def test_adco_and_ifm_only_train_through_the_engine_loop(tmp_path, capsys):
    """``--method adco``: the negative bank (no encoder gradient, see test_adco) moves during a real run through
    the loop's after_step; ``--ifm-only`` reaches the saved loss config."""
    write_cifar10(tmp_path / "data")
    config = _tiny(tmp_path / "data", "cifar10", "adco", **{"knn.every": 0, "adco.n_negatives": 16})
    pretrain(config, tmp_path / "adco")
    bank = Checkpointer(tmp_path / "adco").load()["model"]["negatives"]
    seed_everything(config.seed)
    initial = build_model(config, 8).negatives.detach()
    assert bank.shape == initial.shape and not torch.equal(bank, initial)
    code = main(["vision", "pretrain", "--config", "cpu_tiny", "--data-root", str(tmp_path / "data"),
                 "--ifm-only", "--ifm-eps", "0.1", "--epochs", "1", "--out", str(tmp_path / "only"),
                 "--set", "data.crop_size=8", "--set", "data.eval_size=8", "--set", "knn.every=0", "--device", "cpu"])
    assert code == 0
    saved = yaml.safe_load((tmp_path / "only" / "config.yaml").read_text(encoding="utf-8"))["loss"]
    assert saved["ifm_only"] is True and saved["epsilon"] == 0.1


@pytest.mark.slow
def test_on_device_augmentation_trains_and_resumes_exactly(tmp_path, monkeypatch):
    """``augment.device: gpu`` (batch-wise views; on this CPU the same code path) trains through the loop, and a
    killed-then-resumed run repeats the uninterrupted one: the views' generator is reseeded per epoch."""
    write_cifar10(tmp_path / "data")
    config = _tiny(tmp_path / "data", "cifar10", "simclr", **{"augment.device": "gpu", "knn.every": 0})
    full = pretrain(config, tmp_path / "full")
    _killed_after_first_checkpoint(config, tmp_path / "killed", monkeypatch)
    resumed = pretrain(config, tmp_path / "killed", resume=True)
    assert np.isfinite(full["loss"]) and resumed["loss"] == full["loss"]
