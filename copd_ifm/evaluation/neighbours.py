"""IFM neighbour grids (paper Sec. 3.1, Fig. 4) of context-aware CT runs (``copd-ifm visualize-ifm``).

The retrieval and the grid are the engine's (:mod:`copd_ifm.contrastive.neighbours`). For a run of
``copd-ifm pretrain``: the embedding ``z`` of a whole subject is the graph level's normalised
projection-head output (frozen patch features of every landmark → GCN → mean pool → head: the space of
the graph loss). ``v`` = ``z`` of subject ``i`` with every patch through the run's ``PatchAugment`` (one
random draw for the subject, seeded; always patch augmentation, also for runs trained on
``graph_views: feature``), ``v⁺`` = ``z`` of subject ``i`` un-augmented, ``v⁻`` = another subject, bank =
every subject of the run's store, un-augmented. A subject is drawn as the central axial slice of its patch
at the landmark nearest the landmarks' centroid, grey levels over the stored HU range [−1024, 240].
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from copd_ifm import files
from copd_ifm.contrastive.distributed import session
from copd_ifm.contrastive.neighbours import perturbed_neighbours, pick_anchors, plot_neighbour_grid, with_zero
from copd_ifm.errors import UserError


@torch.no_grad()
def subject_embedding(model: Any, patches: Tensor) -> Tensor:
    """Graph-level ``z`` ``[1, dim]`` (unit row) of one subject's patches ``[L, 1, P, P, P]``."""
    feats = model.node_features(patches[None])
    return F.normalize(model.graph.encoder_q(*model.graph_inputs(feats, 1)), dim=1)


def ct_ifm_neighbours(run_dir: str | Path, eps: Sequence[float] = (0.1, 0.2, 1.0), anchors: int = 4,
                      out: str | Path | None = None, device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Neighbour grid of a context-aware run (module doc); writes ``OUT/ifm_neighbours.{png,json}``.

    ``out`` defaults to ``RUN/ifm``; ``anchors`` evenly spaced subjects of the
    run's store; returns the JSON content (bank indices and subject ids).
    """
    if anchors < 1:
        raise UserError(f"--anchors must be >= 1, got {anchors}")
    with session(device) as info:
        return _ct_ifm_neighbours(Path(run_dir), with_zero(eps), anchors, Path(out) if out else Path(run_dir) / "ifm",
                                  info.device, seed)


def _ct_ifm_neighbours(run_dir: Path, eps: list[float], anchors: int, folder: Path, dev: torch.device,
                       seed: int) -> dict[str, Any]:
    from copd_ifm.context.augment import PatchAugment
    from copd_ifm.context.data import SubjectDataset
    from copd_ifm.context.train import load_trained, open_store

    model, cohort, cfg = load_trained(run_dir, dev)
    store = open_store(cohort)
    subjects = SubjectDataset(store)
    n = len(subjects)
    if n < 2:
        raise UserError(f"{cohort.store_path}: {n} subject(s) in the store; the bank needs at least 2")
    bank = torch.cat([subject_embedding(model, subjects[i].to(dev)) for i in range(n)])
    index, others = pick_anchors(n, anchors, seed)
    augment = PatchAugment(cfg.augment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = [augment(subjects[int(i)].to(dev), torch.zeros(store.n_landmarks, dtype=torch.long)) for i in index]
    anchor = torch.cat([subject_embedding(model, v) for v in views])
    found = perturbed_neighbours(anchor, bank[index.to(dev)], bank[others.to(dev)], bank, eps)
    coords = np.asarray(store.landmark_coords)
    landmark = int(np.linalg.norm(coords - coords.mean(0), axis=1).argmin())
    result = {"run": str(run_dir), "space": "graph-level normalised projection-head output z of a subject",
              "bank_size": n, "eps": eps, "landmark": landmark, "anchor_index": index.tolist(),
              "negative_index": others.tolist(), "anchor_sid": [store.sids[int(i)] for i in index],
              **{k: v.tolist() for k, v in found.items()}}
    files.atomic_write_text(folder / "ifm_neighbours.json", json.dumps(result, indent=2) + "\n")
    mid = store.patch_size // 2
    plot_neighbour_grid([v[landmark, 0, mid].cpu().numpy() for v in views],
                        lambda i: subjects[i][landmark, 0, mid].numpy(), found, eps, folder / "ifm_neighbours.png",
                        f"Nearest subjects to IFM-perturbed keys (landmark {landmark}, central axial slice; "
                        f"cosine to the anchor)", grey_range=(-1.0, 1.0))
    return result
