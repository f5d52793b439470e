"""The landmark graph: face neighbours only (= the anchor's overlap rule), symmetric, optional self loops;
the anchor's per-subject overlap graph on hand-made corners."""
from __future__ import annotations

import numpy as np
import torch
from torch_geometric.utils import contains_self_loops, is_undirected

from copd_ifm.ct.graph import landmark_graph, overlap_graph
from copd_ifm.ct.landmarks import atlas_landmarks


def _overlap(corners: np.ndarray, size: int) -> np.ndarray:
    """[L, L] volume shared by cubes of side ``size`` at ``corners``, over size³ (the anchor's weight)."""
    return np.prod(np.clip(size - np.abs(corners[:, None] - corners[None]), 0, None), axis=-1) / size ** 3


def test_graph_is_the_anchor_overlap_rule_on_the_1mm_grid():
    corners = atlas_landmarks(1.0, 32, 26.0, 0.1)
    graph = landmark_graph(corners, 26)
    edges = set(map(tuple, graph.edge_index.t().tolist()))
    overlap = _overlap(corners, 32)
    np.fill_diagonal(overlap, 0.0)
    expected = set(map(tuple, np.argwhere(overlap > 0.13).tolist()))
    assert edges == expected
    assert is_undirected(graph.edge_index) and not contains_self_loops(graph.edge_index)
    diff = np.abs(corners[graph.edge_index[0]] - corners[graph.edge_index[1]])
    assert np.all(np.sort(diff, 1) == [0, 0, 26])                    # one step along one axis
    assert graph.num_edges / graph.num_nodes == np.float64(2762 / 575)  # mean degree 4.8
    torch.testing.assert_close(graph.x, torch.from_numpy((corners / corners.max(0)).astype(np.float32)))
    assert graph.x.dtype == torch.float32 and graph.x.shape == (575, 3)


def test_small_lattice_and_self_loops():
    corners = np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0], [5, 5, 0], [10, 10, 10]])
    graph = landmark_graph(corners, 5)
    assert set(map(tuple, graph.edge_index.t().tolist())) == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 3), (3, 1),
                                                             (2, 3), (3, 2)}
    looped = landmark_graph(corners, 5, self_loops=True)
    assert looped.num_edges == graph.num_edges + 5 and contains_self_loops(looped.edge_index)


def _pairs(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def test_overlap_graph_hand_computed():
    corners = np.array([[0, 0, 0], [20, 0, 0], [0, 0, 28], [5, 5, 5]], dtype=np.float32)
    # weights /32³: (0,1) 12·32·32 = .375, (0,2) 32·32·4 = .125, (0,3) 27³ = .60, (1,2) 12·32·4 = .047,
    # (1,3) 17·27·27 = .378, (2,3) 27·27·9 = .20; and 1 on the diagonal
    expected = {(0, 1), (0, 3), (1, 3), (2, 3)}
    expected |= {(j, i) for i, j in expected} | {(i, i) for i in range(4)}
    assert _pairs(overlap_graph(corners, 32)) == expected


def test_overlap_graph_of_atlas_corners_and_of_larger_subjects():
    corners = atlas_landmarks(1.0, 32, 26.0, 0.1).astype(np.float64)
    lattice = landmark_graph(corners.astype(np.int64), 26, self_loops=True)
    assert _pairs(overlap_graph(corners, 32)) == _pairs(lattice.edge_index)       # identity subject
    centre = corners.mean(0)
    # face neighbours overlap (32 − 26·s)/32: above 0.13 up to s = 27.84 / 26 = 1.0708
    assert _pairs(overlap_graph(centre + 1.07 * (corners - centre), 32)) == _pairs(lattice.edge_index)
    grown = overlap_graph(centre + 1.072 * (corners - centre), 32)
    assert _pairs(grown) == {(i, i) for i in range(len(corners))}                    # degree 0 but itself
