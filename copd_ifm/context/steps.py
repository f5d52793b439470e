"""The two step functions of the context-aware model, as :class:`~copd_ifm.contrastive.loop.Phase` objects.

Patch level: one landmark × many subjects per step; two augmented views of each
patch; the per-landmark queue holds the same anatomical location of other
subjects. Graph level (``graph_subepochs`` passes per epoch): whole subjects per
step; node features from the frozen patch encoder, either of augmented patches
(``graph_views: patch``, the anchor: one deformation per subject view) or of the
cohort encoded once per epoch plus node dropout and feature noise
(``graph_views: feature``, a CPU shortcut).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from copd_ifm.context.augment import PatchAugment
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.data import (PatchStepDataset, PlanLoader, SubjectBatchDataset, SubjectDataset, graph_epoch_plan,
                                   patch_epoch_plan, subject_adjacency)
from copd_ifm.context.model import ContextModel
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.loop import Phase, StepOutput
from copd_ifm.contrastive.optim import build_optimizer, build_scheduler
from copd_ifm.contrastive.runtime import autocast
from copd_ifm.ct.store import PatchStore


class ContextSteps:
    """Plans and steps of both levels for one process (rank) of a run."""

    def __init__(self, model: ContextModel, store: PatchStore, cfg: PretrainConfig, info: D.DistInfo) -> None:
        self.model, self.store, self.cfg, self.info = model, store, cfg, info
        self.augment = PatchAugment(cfg.augment)
        self.patch_net: nn.Module = D.wrap_ddp(model.patch, info.device)
        self.graph_net: nn.Module = D.wrap_ddp(model.graph, info.device)
        self.cached: Tensor | None = None       # "feature" views: [n_subjects, L, F] of this epoch
        self.scale: Tensor | None = None        # per-feature sd over the cohort [F]
        # One loader per kind of pass, built on first use; their workers live for the whole run.
        self._loaders: dict[str, PlanLoader] = {}

    def phases(self) -> list[Phase]:
        """The patch phase then the graph phase (each only when enabled in ``schedule``)."""
        sched, n = self.cfg.schedule, len(self.store.sids)
        out = []
        if sched.patch_level:
            steps = len(self._patch_plan(0))
            opt = build_optimizer([p for p in self.model.patch.parameters() if p.requires_grad], self.cfg.optim)
            out.append(Phase("patch", "patches", opt, build_scheduler(opt, self.cfg.optim, steps * sched.epochs, steps),
                             lambda e, r: self._patch_batches(e), self.patch_step, log_every=self.cfg.log_every))
        if sched.graph_level:
            steps = len(graph_epoch_plan(n, sched.graph_batch, self.cfg.seed, 0, 0, 0, self.info.world_size))
            per_epoch = steps * sched.graph_subepochs
            opt = build_optimizer([p for p in self.model.graph.parameters() if p.requires_grad], self.cfg.optim)
            out.append(Phase("graph", "subjects", opt, build_scheduler(opt, self.cfg.optim, per_epoch * sched.epochs,
                                                                      per_epoch),
                             self._graph_batches, self.graph_step, repeats=sched.graph_subepochs))
        return out

    def _patch_plan(self, epoch: int) -> list[Any]:
        sched = self.cfg.schedule
        return patch_epoch_plan(len(self.store.sids), self.model.n_landmarks, sched.patch_batch, self.cfg.seed, epoch,
                                sched.landmarks_per_epoch, self.info.rank, self.info.world_size)

    def _patch_batches(self, epoch: int) -> tuple[Iterable[Any], int]:
        plan = self._patch_plan(epoch)
        return self._loader("patch", lambda: PatchStepDataset(self.store))(plan), len(plan)

    def _loader(self, kind: str, dataset: Callable[[], Dataset]) -> PlanLoader:
        if kind not in self._loaders:
            self._loaders[kind] = PlanLoader(dataset(), self.cfg.workers)
        return self._loaders[kind]

    def patch_step(self, batch: tuple[Tensor, Tensor]) -> StepOutput:
        """``[b, 1, P, P, P]`` patches of one landmark → cosines against that landmark's queue."""
        patches, landmark = batch[0].to(self.info.device, non_blocking=True), int(batch[1])
        loc = self.model.landmark_coords[landmark].expand(patches.shape[0], 3)
        with torch.no_grad():
            v1, v2 = self.augment(patches), self.augment(patches)
        out = self.patch_net((v1, loc), (v2, loc), queue_id=self.model.queue_id(landmark))
        return StepOutput(out.pos, out.neg, patches.shape[0])

    def _graph_batches(self, epoch: int, sub: int) -> tuple[Iterable[Any], int]:
        sched = self.cfg.schedule
        plan = graph_epoch_plan(len(self.store.sids), sched.graph_batch, self.cfg.seed, epoch, sub,
                                self.info.rank, self.info.world_size)
        subject_graphs = self.cfg.graph == "subject"
        if sched.graph_views == "patch":
            views = self._loader("graph", lambda: SubjectBatchDataset(self.store, subject_graphs))
            return views(plan), len(plan)
        if sub == 0:
            self.cached = self._encode_cohort()
            self.scale = self.cached.flatten(0, 1).std(0)
        return [(torch.tensor(b), subject_adjacency(self.store, b) if subject_graphs else None) for b in plan], \
            len(plan)

    def _encode_cohort(self) -> Tensor:
        """Frozen patch features of every subject without augmentation: ``[n_subjects, L, F]``."""
        return torch.stack([self.model.node_features(x[None].to(self.info.device, non_blocking=True))
                            for x in self._loader("cohort", lambda: SubjectDataset(self.store))(
                                range(len(self.store.sids)))])

    def _feature_view(self, feats: Tensor) -> Tensor:
        """Node dropout (zeroed nodes) and Gaussian noise: ``[N, F]`` → ``[N, F]``."""
        aug = self.cfg.augment
        keep = (torch.rand(feats.shape[0], 1, device=feats.device) >= aug.node_drop).to(feats.dtype)
        return (feats + torch.randn_like(feats) * self.scale * aug.feature_noise) * keep

    def graph_step(self, batch: tuple[Tensor, Tensor | None]) -> StepOutput:
        """Subjects (``[G]`` indices, or ``[G, L, 1, P, P, P]`` patches) and their ``[G, L, L]`` graphs (None:
        the lattice) → cosines against the subject queue; both views share the adjacency."""
        n_lm = self.model.n_landmarks
        subjects, adjacency = batch
        if self.cfg.schedule.graph_views == "feature":
            assert self.cached is not None
            feats = self.cached[subjects].flatten(0, 1)
            f1, f2, g = self._feature_view(feats), self._feature_view(feats), len(subjects)
        else:
            patches = subjects.to(self.info.device, non_blocking=True)
            g = patches.shape[0]
            flat = patches.flatten(0, 1)
            with torch.no_grad(), autocast(self.info.device, self.cfg.amp):   # one group per subject: n_lm patches
                f1 = self.model.node_features(self.augment(flat, n_lm).view_as(patches)).float()
                f2 = self.model.node_features(self.augment(flat, n_lm).view_as(patches)).float()
        out = self.graph_net(self.model.graph_inputs(f1, g, adjacency), self.model.graph_inputs(f2, g, adjacency))
        return StepOutput(out.pos, out.neg, g)
