"""One ``--data-root`` rule for every dataset: the folder holding the dataset's folder, or that folder itself."""
from __future__ import annotations

import numpy as np
import pytest

from copd_ifm.cli import main
from copd_ifm.errors import UserError
from natural_images.config import DataConfig
from natural_images.datasets import build_dataset, dataset_labels, dataset_root, dataset_spec, image_sizes
from natural_images.trifeature import TrifeatureSpec, make_trifeature
from tests.vision.test_datasets import write_cifar10, write_cifar100, write_stl10, write_tinyimagenet


def _open(dataset: str, root) -> tuple:
    data = DataConfig(dataset=dataset, root=str(root), verify=False)
    train = build_dataset(data, "train")
    return len(train), dataset_labels(train), np.asarray(train[0][0]), image_sizes(data)


@pytest.mark.parametrize("dataset, write", [("cifar10", write_cifar10), ("cifar100", write_cifar100),
                                            ("stl10", write_stl10),
                                            ("tinyimagenet", lambda root: write_tinyimagenet(root, ["n01", "n02"]))])
def test_the_dataset_folder_itself_opens_like_its_parent(tmp_path, dataset, write):
    write(tmp_path)
    folder = tmp_path / dataset_spec(dataset).folder
    assert dataset_root(dataset, folder) == tmp_path and dataset_root(dataset, tmp_path) == tmp_path
    (n, labels, image, sizes), (n_self, labels_self, image_self, sizes_self) = (_open(dataset, tmp_path),
                                                                                _open(dataset, folder))
    assert n == n_self > 0 and sizes == sizes_self
    assert np.array_equal(labels.numpy(), labels_self.numpy()) and np.array_equal(image, image_self)


@pytest.mark.slow
def test_trifeature_folder_itself_sets_the_same_sizes_and_trains_from_the_cli(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    folder = make_trifeature(tmp_path / "trifeature", TrifeatureSpec(size=16, per_combination=2,
                                                                     test_per_combination=1))
    assert _open("trifeature", folder)[0] == _open("trifeature", tmp_path)[0] == 1000
    assert _open("trifeature", folder)[3] == _open("trifeature", tmp_path)[3] == (16, 16)
    args = ["vision", "pretrain", "--config", "cpu_tiny", "--dataset", "trifeature", "--data-root", str(folder),
            "--out", str(tmp_path / "run"), "--device", "cpu", "--set", "epochs=1", "--set", "knn.every=0",
            "--set", "linear.epochs=1", "--set", "data.limit=40"]
    assert main(args) == 0 and (tmp_path / "run" / "summary.json").is_file()


def test_a_nested_folder_of_the_same_name_wins_and_the_folder_dataset_is_its_root(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")          # .../cifar-10-batches-py/cifar-10-batches-py
    assert dataset_root("cifar10", tmp_path / "cifar-10-batches-py") == tmp_path / "cifar-10-batches-py"
    (tmp_path / "train").mkdir()
    assert dataset_root("folder", tmp_path / "train") == tmp_path / "train"


def test_a_folder_that_is_neither_names_both_choices(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py not found.*the dataset's folder or its parent"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "elsewhere")), "train")
