"""MoCo: momentum update, queue wrap-around, gradients, similarities."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from copd_ifm.contrastive import MoCo, info_nce


def _moco(queue_size: int = 10, num_queues: int = 1, m: float = 0.9) -> MoCo:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    return MoCo(encoder, feat_dim=8, dim=4, queue_size=queue_size, momentum=m, num_queues=num_queues)


def test_momentum_update_formula():
    model = _moco(m=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q_params = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update()
    for pk, k0, pq in zip(model.encoder_k.parameters(), before_k, q_params):
        assert torch.allclose(pk, 0.9 * k0 + 0.1 * pq)


def test_queue_pointer_wraps_around():
    model = _moco(queue_size=10)
    keys = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    for k in keys:
        model.enqueue(k)
    assert int(model.queue_ptr[0]) == (3 * 4) % 10
    # The third batch wrote rows 8, 9, 0, 1.
    assert torch.allclose(model.queue[0, [8, 9, 0, 1]], keys[2])
    assert torch.allclose(model.queue[0, 2:8], torch.cat([keys[0][2:], keys[1]]))


def test_per_group_queues_are_independent():
    model = _moco(queue_size=6, num_queues=3)
    before = model.queue.clone()
    k = F.normalize(torch.randn(2, 4), dim=1)
    model.enqueue(k, queue_id=1)
    assert torch.equal(model.queue[0], before[0]) and torch.equal(model.queue[2], before[2])
    assert torch.allclose(model.queue[1, :2], k)
    assert model.queue_ptr.tolist() == [0, 2, 0]


def test_keys_never_receive_gradients_and_similarities_match():
    model = _moco(queue_size=16)
    x_q, x_k = torch.randn(5, 6), torch.randn(5, 6)
    queue_before = model.queue[0].clone()
    out = model((x_q,), (x_k,))
    loss = info_nce(out.q, out.k, queue_before, temperature=0.2, epsilon=0.1)
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert not out.k.requires_grad
    assert torch.allclose(out.neg, out.q @ queue_before.T, atol=1e-6)
    assert torch.allclose(out.pos, (out.q * out.k).sum(1))
    # This batch's keys were enqueued after the similarities were taken.
    assert torch.allclose(model.queue[0, :5], out.k)


def test_key_encoder_starts_as_copy_and_lags_behind():
    model = _moco(m=0.99)
    reference = copy.deepcopy(model.encoder_q.state_dict())
    assert all(torch.equal(reference[k], v) for k, v in model.encoder_k.state_dict().items())
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
    out = model((torch.randn(8, 6),), (torch.randn(8, 6),))
    info_nce(out.q, out.k, model.queue[0], 0.2).backward()
    opt.step()
    q_w = model.encoder_q.encoder[0].weight
    k_w = model.encoder_k.encoder[0].weight
    assert not torch.allclose(q_w, k_w)


def test_metrics_logger_drops_rows_after_the_resumed_checkpoint(tmp_path):
    import csv

    from copd_ifm.contrastive.metrics import MetricsLogger

    first = MetricsLogger(tmp_path, enabled=True)
    for step in range(1, 6):
        first.log(step, loss=1.0 / step)
    first.close()
    resumed = MetricsLogger(tmp_path, start_step=3, enabled=True)
    resumed.log(4, loss=0.5)
    resumed.close()
    with (tmp_path / "metrics.csv").open(encoding="utf-8") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4]


def test_metrics_logger_drops_rows_of_a_run_that_died_before_its_first_checkpoint(tmp_path):
    import csv

    from copd_ifm.contrastive.metrics import MetricsLogger

    dead = MetricsLogger(tmp_path, enabled=True)
    for step in range(1, 4):
        dead.log(step, loss=1.0)
    dead.close()
    fresh = MetricsLogger(tmp_path, enabled=True)  # a new run in the same folder starts at step 0
    for step in range(1, 3):
        fresh.log(step, loss=0.5)
    fresh.close()
    with (tmp_path / "metrics.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2] and {r["value"] for r in rows} == {"0.5"}
