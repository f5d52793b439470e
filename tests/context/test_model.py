"""Context-aware model pieces: augmentation, sampling plans, graph encoder invariances."""
from __future__ import annotations

import torch

from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.data import graph_epoch_plan, patch_epoch_plan
from copd_ifm.context.encoders import AnchorEncoder, GraphEncoder, PatchEncoder
from copd_ifm.context.model import ContextModel, dense_adjacency


def _lattice(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``[n³, 3]`` and face-neighbour edges of an ``n × n × n`` lattice."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).view(-1, 3).float()
    diff = (coords[:, None] - coords[None]).abs().sum(-1)
    edges = torch.nonzero(diff == 1).T
    return coords / (n - 1), edges


def test_patch_plan_one_landmark_per_step_and_disjoint_ranks():
    full = patch_epoch_plan(10, 6, batch=4, seed=1, epoch=2)
    assert len(full) == 6 * 2  # 10 // 4 batches per landmark, remainder dropped
    assert full == patch_epoch_plan(10, 6, batch=4, seed=1, epoch=2)
    assert full != patch_epoch_plan(10, 6, batch=4, seed=1, epoch=3)
    r0 = patch_epoch_plan(10, 6, batch=4, seed=1, epoch=2, rank=0, world=2)
    r1 = patch_epoch_plan(10, 6, batch=4, seed=1, epoch=2, rank=1, world=2)
    for a, b, f in zip(r0, r1, full):
        assert a.landmark == b.landmark == f.landmark
        assert set(a.subjects).isdisjoint(b.subjects) and set(a.subjects) | set(b.subjects) == set(f.subjects)
    sub = patch_epoch_plan(10, 6, batch=4, seed=1, epoch=2, landmarks_per_epoch=3)
    assert len({s.landmark for s in sub}) == 3


def test_graph_plan_covers_subjects_once():
    plan = graph_epoch_plan(9, batch=4, seed=0, epoch=0, sub=0)
    flat = [s for b in plan for s in b]
    assert len(plan) == 2 and len(set(flat)) == 8


def test_dense_adjacency_and_lattice_graph_inputs():
    _, edges = _lattice(2)
    adjacency = dense_adjacency(edges, 8)
    assert adjacency.sum() == edges.shape[1] and all(adjacency[i, j] for i, j in edges.t().tolist())
    cfg = PretrainConfig()
    model = ContextModel(cfg, torch.zeros(8, 3), edges)
    x, batch_adjacency = model.graph_inputs(torch.randn(3 * 8, 5), 3)
    assert x.shape == (3, 8, 5) and batch_adjacency.shape == (3, 8, 8) and batch_adjacency.stride(0) == 0  # no copy
    assert all(torch.equal(a, adjacency) for a in batch_adjacency)


def test_graph_encoder_invariant_to_landmark_permutation():
    torch.manual_seed(0)
    coords, edges = _lattice(3)
    enc = GraphEncoder(16).eval()
    x = torch.randn(27, 16)
    perm = torch.randperm(27)
    inverse = torch.argsort(perm)
    permuted_edges = inverse[edges]  # node i of the new order is node perm[i] of the old one
    out = enc(x[None], dense_adjacency(edges, 27)[None])
    out_perm = enc(x[perm][None], dense_adjacency(permuted_edges, 27)[None])
    assert torch.allclose(out, out_perm, atol=1e-5)
    nodes = enc.node_embeddings(x, edges)
    assert torch.allclose(enc.node_embeddings(x[perm], permuted_edges), nodes[perm], atol=1e-5)


def test_patch_encoder_shapes_and_location_conditioning():
    torch.manual_seed(0)
    enc = PatchEncoder([4, 8], feat_dim=16).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    a = enc(x, torch.zeros(2, 3))
    b = enc(x, torch.ones(2, 3))
    assert a.shape == (2, 16) and not torch.allclose(a, b)


def test_context_model_levels_share_the_patch_encoder():
    coords, edges = _lattice(2)
    cfg = PretrainConfig()
    cfg.model.channels = [4, 8]
    cfg.model.feat_dim = 16
    cfg.moco.patch_queue = 8
    model = ContextModel(cfg, coords, edges)
    assert model.patch.queue.shape == (8, 8, 128)  # one queue per landmark
    patches = torch.randn(2, 8, 1, 8, 8, 8)
    feats = model.node_features(patches)
    assert feats.shape == (16, 16) and not feats.requires_grad
    x, adjacency = model.graph_inputs(feats, 2)
    assert x.shape == (2, 8, 16) and adjacency.shape == (2, 8, 8)
    out = model.graph((x, adjacency), (x, adjacency))
    assert out.pos.shape == (2,) and out.neg.shape == (2, cfg.moco.graph_queue)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_anchor_trunk_layers_and_shapes():
    enc = AnchorEncoder([8, 16, 32, 64], 128).eval()
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 13 and [c.out_channels for c in convs] == [8, 8] + [16] * 3 + [32] * 3 + [64] * 3 + [128] * 2
    assert sum(c.stride[0] == 2 for c in convs) == 5                      # 32 → 16 → 8 → 4 → 2 → 1
    # the anchor's Encoder without its fc: 13 Conv3d(k=3, bias) + BatchNorm3d(weight, bias)
    widths = [(1, 8), (8, 8), (8, 16), (16, 16), (16, 16), (16, 32), (32, 32), (32, 32), (32, 64), (64, 64),
              (64, 64), (64, 128), (128, 128)]
    assert _n_params(enc) == sum(27 * i * o + o + 2 * o for i, o in widths) == 1_030_200
    with torch.no_grad():
        for p in (32, 8, 48):      # 8³: the tiny test store; 48³ ends at 2³ and is averaged
            assert enc(torch.randn(2, 1, p, p, p)).shape == (2, 128)
        h = enc.cnn[:-2](torch.randn(2, 1, 32, 32, 32))
    assert h.shape == (2, 128, 1, 1, 1)                                    # no pooling needed at 32³


def test_anchor_location_reaches_only_the_head():
    torch.manual_seed(0)
    coords, edges = _lattice(2)
    cfg = PretrainConfig()
    cfg.model.encoder, cfg.model.channels, cfg.moco.patch_queue = "anchor", [8, 16, 32, 64], 8
    model = ContextModel(cfg, coords, edges).eval()
    head = model.patch.encoder_q.head
    assert head[0].in_features == 131 and head[0].out_features == 131 and head[2].out_features == 128
    x = torch.randn(3, 1, 8, 8, 8)
    near, far = torch.zeros(3, 3), torch.ones(3, 3)
    enc = model.patch_encoder
    with torch.no_grad():
        assert enc.features(x, near).shape == (3, 128)
        assert torch.equal(enc.features(x, near), enc.features(x, far))
        assert not torch.allclose(model.patch.encoder_q(x, near), model.patch.encoder_q(x, far))
        subject = torch.randn(1, 8, 1, 8, 8, 8)                            # all 8 landmarks of one subject
        nodes = model.node_features(subject)
        model.landmark_coords.add_(1.0)
        assert nodes.shape == (8, 128) and torch.equal(model.node_features(subject), nodes)


def test_dense_graph_encoder_equals_the_sparse_computation():
    """GraphEncoder on dense ``[G, L, F]`` + ``[G, L, L]`` inputs = node embeddings on the batched edge list,
    mean-pooled per subject (torch_geometric's global_mean_pool), with a different graph per subject."""
    from torch_geometric.nn import global_mean_pool

    torch.manual_seed(0)
    enc = GraphEncoder(6).eval()
    x = torch.randn(3, 5, 6)
    adjacency = torch.rand(3, 5, 5) > 0.5
    edges = torch.cat([torch.stack(torch.nonzero(adjacency[g], as_tuple=True)) + 5 * g for g in range(3)], 1)
    expected = global_mean_pool(enc.node_embeddings(x.reshape(15, 6), edges), torch.arange(3).repeat_interleave(5))
    assert torch.allclose(enc(x, adjacency), expected, atol=1e-6)


def test_graph_encoder_equals_gcnconv_adding_its_own_self_loops():
    """Self loops added once per lattice (not inside GCNConv every call) give the same values and gradients."""
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    enc = GraphEncoder(8)
    reference = GCNConv(8, 8)                               # add_self_loops=True: the former layer
    reference.load_state_dict(enc.conv.state_dict())
    edges = torch.randint(0, 27, (2, 70))
    lattice = dense_adjacency(edges, 27)
    x = torch.randn(3, 27, 8, requires_grad=True)
    for adjacency in (lattice.expand(3, -1, -1), lattice.expand(3, -1, -1).contiguous()):
        graph, i, j = adjacency.nonzero(as_tuple=True)
        flat = x.reshape(81, 8)
        expected = enc.act(enc.norm(reference(flat, torch.stack([graph * 27 + i, graph * 27 + j])))).view(3, 27, -1)
        out = enc(x, adjacency)
        assert torch.equal(out, expected.mean(1))
        assert torch.equal(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(expected.mean(1).sum(), x)[0])
    assert torch.equal(enc.node_embeddings(x[0].detach(), edges),
                       enc.act(enc.norm(reference(x[0].detach(), edges))))
