"""The context-aware model: a patch-level MoCo and a graph-level MoCo sharing one patch encoder.

Patch level: ``MoCo`` over the patch encoder with one queue per landmark (or
one shared). ``model.encoder: anchor``: the anchor's trunk, the location
joined after it, so it enters only the projection head (131 → 131 → 128);
``compact``: a shallower CNN with the location inside the encoder.
Graph level: node features are the *frozen* patch encoder's features of every
landmark of a subject; ``MoCo(GraphEncoder)`` contrasts subjects. Both use the
shared engine (:class:`copd_ifm.contrastive.MoCo`), whose outputs feed
:class:`copd_ifm.contrastive.ContrastiveLoss` (InfoNCE or IFM).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from copd_ifm.context.config import ModelConfig, PretrainConfig
from copd_ifm.context.encoders import AnchorEncoder, GraphEncoder, LocationJoin, PatchEncoder
from copd_ifm.contrastive import MoCo


def dense_adjacency(edge_index: Tensor, n_nodes: int) -> Tensor:
    """``[2, E]`` edges → ``[L, L]`` bool adjacency."""
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=torch.bool, device=edge_index.device)
    adjacency[edge_index[0], edge_index[1]] = True
    return adjacency


def patch_module(m: ModelConfig) -> LocationJoin | PatchEncoder:
    """The module MoCo wraps at patch level: ``(patches [B, 1, P, P, P], location [B, 3])`` → ``[B, out_dim]``."""
    if m.encoder == "anchor":
        return LocationJoin(AnchorEncoder(m.channels, m.feat_dim), m.use_location)
    return PatchEncoder(m.channels, m.feat_dim, m.use_location)


def frozen_features(encoder: LocationJoin | PatchEncoder, coords: Tensor, patches: Tensor,
                    chunk: int = 4096) -> Tensor:
    """Patch-encoder features of whole subjects: ``[G, L, 1, P, P, P]`` → ``[G·L, F]``, with the landmark
    locations ``coords`` ``[L, 3]``; without gradient, the encoder in eval mode, ``chunk`` patches at a time."""
    g, n = patches.shape[:2]
    flat = patches.reshape(g * n, *patches.shape[2:])
    loc = coords.repeat(g, 1)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = torch.cat([encoder.features(flat[i:i + chunk], loc[i:i + chunk]) for i in range(0, g * n, chunk)])
    encoder.train(was_training)
    return out


class SubjectEncoder(nn.Module):
    """A trained model's query patch and graph encoders with its landmark set: subject → features.

    ``forward(patches, edge_index)``: one subject's ``[L, 1, P, P, P]`` network intensities and its context
    graph ``[2, E]`` (``self.edge_index``, the lattice, unless the run used each subject's own graph) →
    ``(node embeddings [L, F], patch features [L, F])``; their means over landmarks are the subject features.
    It runs in the module's own mode and keeps gradients (fine-tuning); ``extract`` calls it in eval mode
    under ``torch.no_grad``.
    """

    def __init__(self, patch: LocationJoin | PatchEncoder, graph: GraphEncoder, landmark_coords: Tensor,
                 edge_index: Tensor) -> None:
        super().__init__()
        self.patch_encoder, self.graph_encoder = patch, graph
        self.register_buffer("landmark_coords", landmark_coords.float())
        self.register_buffer("edge_index", edge_index.long())

    def forward(self, patches: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.patch_encoder.features(patches, self.landmark_coords.to(patches.dtype))
        return self.graph_encoder.node_embeddings(feats, edge_index), feats


class ContextModel(nn.Module):
    """Holds both MoCo levels; ``landmark_coords`` ``[L, 3]`` and ``edge_index`` ``[2, E]`` are buffers."""

    def __init__(self, cfg: PretrainConfig, landmark_coords: Tensor, edge_index: Tensor) -> None:
        super().__init__()
        m, moco = cfg.model, cfg.moco
        n_landmarks = landmark_coords.shape[0]
        self.register_buffer("landmark_coords", landmark_coords.float())
        self.register_buffer("edge_index", edge_index.long())
        # The lattice as a dense [L, L] mask, built once (not saved: it is derived from edge_index).
        self.register_buffer("lattice", dense_adjacency(self.edge_index, n_landmarks), persistent=False)
        patch = patch_module(m)
        self.patch = MoCo(patch, patch.out_dim, m.embed_dim, moco.patch_queue, moco.momentum, m.mlp_head,
                          num_queues=n_landmarks if moco.per_landmark_queue else 1)
        # Graph inputs are dense tensors (features, adjacency), so shuffle-BN moves subjects with their graphs.
        self.graph = MoCo(GraphEncoder(m.feat_dim), m.feat_dim, m.embed_dim, moco.graph_queue, moco.momentum,
                          m.mlp_head)
        self.per_landmark_queue = moco.per_landmark_queue

    @property
    def n_landmarks(self) -> int:
        return self.landmark_coords.shape[0]

    @property
    def patch_encoder(self) -> LocationJoin | PatchEncoder:
        """The query patch encoder (no projection head); ``features`` gives node features."""
        return self.patch.encoder_q.encoder

    @property
    def graph_encoder(self) -> GraphEncoder:
        return self.graph.encoder_q.encoder

    def queue_id(self, landmark: int) -> int:
        return landmark if self.per_landmark_queue else 0

    def node_features(self, patches: Tensor, chunk: int = 4096) -> Tensor:
        """Frozen patch-encoder features of whole subjects: ``[G, L, 1, P, P, P]`` → ``[G·L, F]``
        (see :func:`frozen_features`)."""
        return frozen_features(self.patch_encoder, self.landmark_coords, patches, chunk)

    def subject_encoder(self) -> SubjectEncoder:
        """The query encoders and the landmark set (shared, not copied): what ``extract`` and ``export`` use."""
        return SubjectEncoder(self.patch_encoder, self.graph_encoder, self.landmark_coords, self.edge_index)

    def graph_inputs(self, node_feats: Tensor, n_graphs: int,
                     adjacency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Graph-encoder inputs of ``n_graphs`` subjects with node features ``[n_graphs·L, F]``:
        ``([G, L, F], [G, L, L] bool)``; ``adjacency`` ``[G, L, L]`` per subject, default the lattice for all
        (expanded, stride 0: the graph encoder keeps its edge list)."""
        x = node_feats.view(n_graphs, self.n_landmarks, -1)
        if adjacency is None:
            adjacency = self.lattice.expand(n_graphs, -1, -1)   # a view: the encoder keeps its edges, no copy
        return x, adjacency.to(x.device)
