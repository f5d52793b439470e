"""Encoders of the context-aware model (Sun et al., AAAI 2021).

* :class:`PatchEncoder`: 3-D CNN over one CT patch, conditioned on where the
  patch sits in the atlas: ``[B, 1, P, P, P]`` (network intensity in [−1, 1]) and
  ``[B, 3]`` (normalised atlas coordinates) → ``[B, feat_dim]``.
* :class:`GraphEncoder`: one GCN layer over the anatomical context graph whose
  nodes carry patch features: ``[ΣL, F]`` node features → ``[B, F]`` subject
  embedding (mean over nodes), or per-node embeddings for read-out.
"""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_mean_pool


class PatchEncoder(nn.Module):
    """3-D CNN (MONAI conv blocks, batch norm + ELU) with the location joined before the output layer.

    Each stage is a stride-1 then a stride-2 convolution, so ``P`` halves per
    stage; global average pooling then ``Linear → ELU``; the 3 location numbers are
    concatenated and a last ``Linear`` gives ``feat_dim`` (the anchor: 131 → 128).
    """

    def __init__(self, channels: list[int], feat_dim: int = 128, use_location: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [Convolution(3, c_in, c, strides=1, kernel_size=3, act="ELU", norm="BATCH"),
                       Convolution(3, c, c, strides=2, kernel_size=3, act="ELU", norm="BATCH")]
            c_in = c
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c_in, feat_dim), nn.ELU())
        self.use_location = use_location
        self.out = nn.Linear(feat_dim + (3 if use_location else 0), feat_dim)
        self.feat_dim = feat_dim

    def forward(self, patches: Tensor, location: Tensor) -> Tensor:
        """``patches`` ``[B, 1, P, P, P]``, ``location`` ``[B, 3]`` → ``[B, feat_dim]``."""
        h = self.fc(self.cnn(patches))
        if self.use_location:
            h = torch.cat([h, location.to(h.dtype)], dim=1)
        return self.out(h)


class GraphEncoder(nn.Module):
    """``GCNConv(F, F) → BatchNorm → ELU`` over the context graph, mean-pooled per subject."""

    def __init__(self, feat_dim: int = 128) -> None:
        super().__init__()
        self.conv = GCNConv(feat_dim, feat_dim)
        self.norm = nn.BatchNorm1d(feat_dim)
        self.act = nn.ELU()
        self.feat_dim = feat_dim

    def node_embeddings(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node features ``[ΣL, F]`` and edges ``[2, E]`` → node embeddings ``[ΣL, F]``."""
        return self.act(self.norm(self.conv(x, edge_index)))

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        """Node features ``[ΣL, F]``, edges ``[2, E]``, node → subject ``[ΣL]`` → ``[B, F]``."""
        return global_mean_pool(self.node_embeddings(x, edge_index), batch)
