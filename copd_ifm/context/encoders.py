"""Encoders of the context-aware model (Sun et al., AAAI 2021).

* :class:`AnchorEncoder` (``model.encoder: anchor``): the anchor's 3-D CNN trunk
  (``utils/cond_encoder.py``) ``[B, 1, P, P, P]`` → ``[B, feat_dim]``. Its output
  is the node feature and the extracted feature; :class:`LocationJoin` appends
  the location after it, so the location reaches the projection head only
  (the anchor's 131-input head).
* :class:`PatchEncoder` (``model.encoder: compact``): a shallower CNN with the
  location joined inside: ``[B, 1, P, P, P]`` and ``[B, 3]`` → ``[B, feat_dim]``.

Both patch modules that MoCo wraps take ``(patches, location)`` and have
``features(patches, location)``: the location-free (anchor) or
location-conditioned (compact) ``[B, feat_dim]`` used as node features.
* :class:`GraphEncoder`: one GCN layer over the anatomical context graph whose
  nodes carry patch features: ``[ΣL, F]`` node features → ``[B, F]`` subject
  embedding (mean over nodes), or per-node embeddings for read-out.
"""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.utils import add_remaining_self_loops


def _conv(c_in: int, c_out: int, stride: int) -> nn.Module:
    """3³ convolution (padding 1) → BatchNorm → ELU."""
    return Convolution(3, c_in, c_out, strides=stride, kernel_size=3, act="ELU", norm="BATCH")


class AnchorEncoder(nn.Module):
    """The anchor's trunk: a stem, stages of three convolutions, a last pair; every block halves ``P``.

    Layers for ``channels = [c0, c1, …]`` and ``feat_dim = F``: stem ``1→c0`` (stride 1),
    ``c0→c0`` (stride 2); per further width ``c``: ``→c``, ``c→c`` (stride 1), ``c→c``
    (stride 2); last ``→F`` (stride 1), ``F→F`` (stride 2). The anchor is
    ``channels = [8, 16, 32, 64]``, ``F = 128``: 13 convolutions, 32³ → 1³.
    A stride-2 convolution of a 1³ map stays 1³ (only its centre tap sees
    data), so smaller patches (8³, 16³) run through the same trunk; larger ones
    end above 1³ and are averaged to 1³ (adaptive pooling, the identity at
    ``P ≤ 2^(len(channels)+1)``).
    """

    def __init__(self, channels: list[int], feat_dim: int = 128) -> None:
        super().__init__()
        layers = [_conv(1, channels[0], 1), _conv(channels[0], channels[0], 2)]
        for c_in, c in zip(channels[:-1], channels[1:]):
            layers += [_conv(c_in, c, 1), _conv(c, c, 1), _conv(c, c, 2)]
        layers += [_conv(channels[-1], feat_dim, 1), _conv(feat_dim, feat_dim, 2)]
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.feat_dim = feat_dim

    def forward(self, patches: Tensor) -> Tensor:
        """``patches`` ``[B, 1, P, P, P]`` → ``[B, feat_dim]``."""
        return self.cnn(patches)


class LocationJoin(nn.Module):
    """Trunk features with the location appended: the input of the anchor's projection head.

    ``forward``: ``[B, 1, P, P, P]``, ``[B, 3]`` → ``[B, feat_dim + 3]`` (``+ 0``
    without ``use_location``); ``features`` gives the trunk's ``[B, feat_dim]`` alone.
    """

    def __init__(self, trunk: AnchorEncoder, use_location: bool = True) -> None:
        super().__init__()
        self.trunk, self.use_location = trunk, use_location
        self.feat_dim = trunk.feat_dim
        self.out_dim = trunk.feat_dim + (3 if use_location else 0)

    def features(self, patches: Tensor, location: Tensor) -> Tensor:
        """Node / extracted feature ``[B, feat_dim]``: the location is not used."""
        return self.trunk(patches)

    def forward(self, patches: Tensor, location: Tensor) -> Tensor:
        h = self.trunk(patches)
        return torch.cat([h, location.to(h.dtype)], dim=1) if self.use_location else h


class PatchEncoder(nn.Module):
    """Compact 3-D CNN (MONAI conv blocks, batch norm + ELU) with the location joined before the output layer.

    Each stage is a stride-1 then a stride-2 convolution, so ``P`` halves per
    stage; global average pooling then ``Linear → ELU``; the 3 location numbers are
    concatenated and a last ``Linear`` gives ``feat_dim`` (131 → 128).
    """

    def __init__(self, channels: list[int], feat_dim: int = 128, use_location: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [_conv(c_in, c, 1), _conv(c, c, 2)]
            c_in = c
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c_in, feat_dim), nn.ELU())
        self.use_location = use_location
        self.out = nn.Linear(feat_dim + (3 if use_location else 0), feat_dim)
        self.feat_dim = self.out_dim = feat_dim

    def forward(self, patches: Tensor, location: Tensor) -> Tensor:
        """``patches`` ``[B, 1, P, P, P]``, ``location`` ``[B, 3]`` → ``[B, feat_dim]``."""
        h = self.fc(self.cnn(patches))
        if self.use_location:
            h = torch.cat([h, location.to(h.dtype)], dim=1)
        return self.out(h)

    def features(self, patches: Tensor, location: Tensor) -> Tensor:
        """Node / extracted feature: the output itself (it carries the location)."""
        return self(patches, location)


class GraphEncoder(nn.Module):
    """``GCNConv(F, F) → BatchNorm → ELU`` over the context graph, mean-pooled per subject."""

    def __init__(self, feat_dim: int = 128) -> None:
        super().__init__()
        # GCNConv's own self-loop insertion cuts edges with a boolean mask (a device→host sync) on every
        # call; the same PyG function runs here instead, once per lattice (see ``_edges``).
        self.conv = GCNConv(feat_dim, feat_dim, add_self_loops=False)
        self.norm = nn.BatchNorm1d(feat_dim)
        self.act = nn.ELU()
        self.feat_dim = feat_dim
        self._shared: tuple[Tensor, Tensor] | None = None   # (shared adjacency, its batched edges)

    def node_embeddings(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node features ``[ΣL, F]`` and edges ``[2, E]`` → node embeddings ``[ΣL, F]`` (self loops added where
        missing, as GCNConv adds them)."""
        return self._embed(x, add_remaining_self_loops(edge_index, num_nodes=x.shape[0])[0])

    def _embed(self, x: Tensor, edges_with_loops: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x, edges_with_loops)))

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Node features ``[G, L, F]`` and adjacency ``[G, L, L]`` (bool) → mean node embedding ``[G, F]``.

        Dense per-subject inputs, so MoCo's shuffle-BN can move subjects with their graphs across ranks.
        """
        g, n, f = x.shape
        return self._embed(x.reshape(g * n, f), self._edges(adjacency)).view(g, n, -1).mean(1)

    def _edges(self, adjacency: Tensor) -> Tensor:
        """Edges ``[2, E]`` of the ``G`` graphs, node ``i`` of graph ``g`` numbered ``g·L + i``, in ``nonzero`` order,
        with the self loops GCNConv would add.

        One ``[L, L]`` graph expanded to every subject (stride 0, the lattice) is looked up once and kept, with
        the tensor itself so its memory cannot be reused by another: no ``nonzero`` (a device→host sync) per step.
        """
        shared = adjacency.dim() == 3 and adjacency.stride(0) == 0
        if shared and self._shared is not None and _same_tensor(self._shared[0], adjacency):
            return self._shared[1]
        graph, i, j = adjacency.nonzero(as_tuple=True)
        n = adjacency.shape[1]
        edges = add_remaining_self_loops(torch.stack([graph * n + i, graph * n + j]),
                                         num_nodes=adjacency.shape[0] * n)[0]
        if shared:
            self._shared = (adjacency, edges)
        return edges


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return (a.data_ptr(), a.shape, a.stride(), a.device) == (b.data_ptr(), b.shape, b.stride(), b.device)
