"""Streaming the patch store into training batches, with O(1) memory per subject.

Patch level: a step is one landmark and a set of subjects (the anchor's
context-aware sampling: negatives in the per-landmark queue are the same
anatomical location in other subjects). Graph level: a step is a set of
subjects with all their landmarks. The order of both is a pure function of
``(seed, epoch, sub-epoch)``, so a resumed run sees the same batches, and under
DDP every rank takes a disjoint slice of each global batch (same landmark on
every rank, so the gathered keys go to the right queue).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from copd_ifm.contrastive.runtime import loader_workers

if TYPE_CHECKING:
    from copd_ifm.ct.store import PatchStore


@dataclass(frozen=True)
class PatchStep:
    landmark: int
    subjects: tuple[int, ...]   # indices into store.sids, this rank's share


def patch_epoch_plan(n_subjects: int, n_landmarks: int, batch: int, seed: int, epoch: int,
                     landmarks_per_epoch: int = 0, rank: int = 0, world: int = 1) -> list[PatchStep]:
    """Steps of one patch epoch for ``rank``: each landmark (a random subset if ``landmarks_per_epoch``),
    subjects shuffled and cut into global batches of ``batch`` (a multiple of ``world``; the remainder is dropped)."""
    rng = np.random.default_rng([seed, epoch, 0])
    landmarks = rng.permutation(n_landmarks)
    if 0 < landmarks_per_epoch < n_landmarks:
        landmarks = landmarks[:landmarks_per_epoch]
    batch = min(batch, n_subjects) // world * world
    steps = []
    for lm in landmarks:
        order = rng.permutation(n_subjects)
        for start in range(0, n_subjects - batch + 1, batch):
            chunk = order[start:start + batch]
            steps.append(PatchStep(int(lm), tuple(int(i) for i in chunk[rank::world])))
    return steps


def graph_epoch_plan(n_subjects: int, batch: int, seed: int, epoch: int, sub: int,
                     rank: int = 0, world: int = 1) -> list[tuple[int, ...]]:
    """Subject batches of one graph sub-epoch for ``rank`` (global batches of ``batch``, remainder dropped)."""
    rng = np.random.default_rng([seed, epoch, 1 + sub])
    order = rng.permutation(n_subjects)
    batch = min(batch, n_subjects) // world * world
    return [tuple(int(i) for i in order[s:s + batch][rank::world])
            for s in range(0, n_subjects - batch + 1, batch)]


class PatchStepDataset(Dataset):
    """Item ``step`` (a :class:`PatchStep` of a plan) → (``[b, 1, P, P, P]`` float32 network intensities,
    landmark id).

    Items are the plan's steps themselves (fed by a :class:`PlanSampler`), so one dataset, and the loader
    workers holding it, serve every epoch's plan.
    """

    def __init__(self, store: PatchStore) -> None:
        self.store = store

    def __getitem__(self, step: PatchStep) -> tuple[Tensor, int]:  # type: ignore[override]
        sids = self.store.sids
        cubes = np.stack([self.store.patches(sids[s])[step.landmark] for s in step.subjects])
        return torch.from_numpy(self.store.to_network(cubes))[:, None], step.landmark


class SubjectDataset(Dataset):
    """Item ``i`` → all patches of subject ``subjects[i]``: ``[L, 1, P, P, P]`` float32 network intensities."""

    def __init__(self, store: PatchStore, subjects: list[int] | None = None) -> None:
        self.store = store
        self.subjects = list(range(len(store.sids))) if subjects is None else subjects

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> Tensor:
        cubes = np.asarray(self.store.patches(self.store.sids[self.subjects[i]]))
        return torch.from_numpy(self.store.to_network(cubes))[:, None]


def subject_adjacency(store: PatchStore, subjects: Sequence[int]) -> Tensor:
    """The anchor's overlap graphs of ``subjects`` (indices into ``store.sids``) as ``[G, L, L]`` bool adjacency."""
    n = store.n_landmarks
    adjacency = torch.zeros(len(subjects), n, n, dtype=torch.bool)
    for g, s in enumerate(subjects):
        edges = store.subject_graph(store.sids[s])
        adjacency[g, edges[0], edges[1]] = True
    return adjacency


class SubjectBatchDataset(Dataset):
    """Item ``step`` (a tuple of subject indices of a graph plan) → (patches ``[G, L, 1, P, P, P]`` float32 of
    those subjects, their overlap graphs ``[G, L, L]`` when ``subject_graphs``, else None)."""

    def __init__(self, store: PatchStore, subject_graphs: bool = False) -> None:
        self.subjects = SubjectDataset(store)
        self.subject_graphs = subject_graphs

    def __getitem__(self, step: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        patches = torch.stack([self.subjects[s] for s in step])
        return patches, subject_adjacency(self.subjects.store, step) if self.subject_graphs else None


class PlanSampler(Sampler):
    """Yields the items of ``plan``, which is replaced between passes (the sampler runs in the main process)."""

    def __init__(self) -> None:
        self.plan: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class PlanLoader:
    """One loader for every pass of a phase: ``plan_loader(plan)`` → the batches of ``plan``, in order.

    Its workers persist across epochs and sub-epochs (no restart, and the patch memory maps they opened
    stay open); the plans are pure functions of the seed and epoch, so the batches are those of a new
    loader per pass.
    """

    def __init__(self, dataset: Dataset, workers: int) -> None:
        self.sampler = PlanSampler()
        self.loader = loader(dataset, workers, sampler=self.sampler)

    def __call__(self, plan: Sequence[Any]) -> DataLoader:
        self.sampler.plan = list(plan)
        return self.loader


def loader(dataset: Dataset, workers: int, batch_size: int | None = None,
           sampler: Sampler | None = None) -> DataLoader:
    """In-order loader with background workers (prefetch) and pinned memory on CUDA; with a ``sampler``
    (a loader reused across passes) the workers persist."""
    workers = loader_workers(workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=sampler is not None and workers > 0,
                      prefetch_factor=4 if workers > 0 else None)
