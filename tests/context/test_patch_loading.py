"""Patch loading: memory maps opened once per process, one loader whose workers serve every pass."""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

from copd_ifm.context.data import PatchStepDataset, PlanLoader, patch_epoch_plan
from copd_ifm.context.train import open_store
from copd_ifm.ct.store import OpenMaps


def test_open_maps_reuse_evict_least_recent_and_pickle_empty(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.npy")
        np.save(paths[-1], np.full((2, 3), i, dtype=np.int16))
    maps = OpenMaps(limit=2)
    first = maps.get(paths[0])
    assert isinstance(first, np.memmap) and not first.flags.writeable and maps.get(paths[0]) is first
    maps.get(paths[1])
    maps.get(paths[0])                       # 0 is now the most recent, so 1 goes when 2 comes
    maps.get(paths[2])
    assert list(maps._maps) == [paths[0], paths[2]] and maps.get(paths[0]) is first
    clone = pickle.loads(pickle.dumps(maps))  # a spawned worker opens its own maps
    assert clone.limit == 2 and not clone._maps
    assert np.array_equal(clone.get(paths[2]), np.full((2, 3), 2))


def test_store_patches_are_the_files_and_opened_once(tiny_cohort):
    store = open_store(tiny_cohort)
    sid = store.sids[0]
    assert store.patches(sid) is store.patches(sid)
    np.testing.assert_array_equal(store.patches(sid), np.load(store.path / "patches" / f"{sid}.npy"))


class _WorkerPid(Dataset):
    def __getitem__(self, item: int) -> tuple[int, int]:
        return item, os.getpid()


def test_plan_loader_keeps_its_workers_and_follows_each_new_plan():
    plans = [[3, 1, 2], [0, 4], [5, 6, 7, 8]]
    pids = set()
    loader = PlanLoader(_WorkerPid(), workers=2)
    for plan in plans:
        items = [(int(i), int(p)) for i, p in loader(plan)]
        assert [i for i, _ in items] == plan
        pids |= {p for _, p in items}
    assert len(pids) == 2 and os.getpid() not in pids      # the same two workers served all three passes


def test_patch_batches_from_the_plan_loader_equal_direct_reads(tiny_cohort):
    store = open_store(tiny_cohort)
    dataset = PatchStepDataset(store)
    loader = PlanLoader(dataset, workers=2)
    for epoch in range(2):
        plan = patch_epoch_plan(len(store.sids), store.n_landmarks, 4, seed=0, epoch=epoch, landmarks_per_epoch=3)
        for step, (patches, landmark) in zip(plan, loader(plan), strict=True):
            cubes = np.stack([np.load(store.path / "patches" / f"{store.sids[s]}.npy")[step.landmark]
                              for s in step.subjects])
            assert landmark == step.landmark
            assert torch.equal(patches, torch.from_numpy(store.to_network(cubes))[:, None])
