"""The anatomical context graph over landmarks (one per cohort, saved as ``graph.pt``).

Two forms: :func:`landmark_graph`, the lattice graph every subject shares
(what training uses), and :func:`overlap_graph`, the anchor's per-subject
graph from the subject-space corners (``centers/<sid>.npy``).

Nodes are the landmarks; ``x`` holds their normalised atlas coordinates
(corner / column max, float32 [L, 3], the anchor's location input) and
``pos`` the atlas corner indices (float32 [L, 3], voxels). Edges join face
neighbours on the landmark lattice: corners one step apart along exactly one
axis. For the anchor's geometry (cube 32, step 26) that is exactly its rule
"overlap volume / 32³ > 0.13" (face neighbours overlap 6/32 ≈ 0.19, edge and
corner neighbours 0.035 and 0.007); the lattice form also holds for steps
that leave no overlap. ``edge_index`` is symmetric, without self loops unless
``self_loops=True`` (GCNConv adds its own by default).
"""
from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import add_self_loops

from copd_ifm.ct.landmarks import normalised_coords

#: The anchor's edge rule: overlap volume of two cubes / cube volume above this.
OVERLAP_THRESHOLD = 0.13


def landmark_graph(corners: np.ndarray, step: int, self_loops: bool = False) -> Data:
    """Graph over landmark ``corners`` ([L, 3] int, lattice ``step`` voxels): face-neighbour edges."""
    corners = np.asarray(corners, dtype=np.int64)
    diff = np.abs(corners[:, None, :] - corners[None, :, :])         # [L, L, 3]
    face = ((diff == step).sum(-1) == 1) & ((diff == 0).sum(-1) == 2)
    src, dst = np.nonzero(face)
    edge_index = torch.from_numpy(np.stack([src, dst])).long()
    if self_loops:
        edge_index, _ = add_self_loops(edge_index, num_nodes=len(corners))
    return Data(x=torch.from_numpy(normalised_coords(corners)), pos=torch.from_numpy(corners.astype(np.float32)),
                edge_index=edge_index, num_nodes=len(corners))


def overlap_graph(corners: np.ndarray, patch_size: int, threshold: float = OVERLAP_THRESHOLD) -> torch.Tensor:
    """The anchor's graph of one subject: ``edge_index`` ``[2, E]`` (long), self loops included.

    ``corners`` ``[L, 3]``: the subject-space corners of its axis-aligned cubes of
    side ``patch_size`` (voxels, continuous). Weight of a pair = shared volume of
    the two cubes / ``patch_size³``; an edge wherever it exceeds ``threshold``
    (every node with itself: weight 1). With the lattice step 26 and cubes of 32,
    face neighbours overlap (32 − 26·s)/32 in a subject scaled by ``s`` along an
    axis, which falls to 0.13 at s = 1.071: larger subjects lose those edges.
    """
    c = np.asarray(corners, dtype=np.float64)
    shared = np.clip(patch_size - np.abs(c[:, None, :] - c[None, :, :]), 0.0, None)   # [L, L, 3]
    weight = shared.prod(-1) / float(patch_size) ** 3
    src, dst = np.nonzero(weight > threshold)
    return torch.from_numpy(np.stack([src, dst])).long()
