"""The anatomical context graph over landmarks (one per cohort, saved as ``graph.pt``).

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
