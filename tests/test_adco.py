"""AdCo's learnable negatives: ascent direction against a hand-derived gradient, encoder untouched, size."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from copd_ifm import config as cfg
from copd_ifm.errors import UserError
from natural_images.config import VisionConfig
from natural_images.methods import AdCo, MoCoV2, adco_negative_step, build_model


def _tiny_adco(k: int = 6, dim: int = 4) -> AdCo:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    return AdCo(backbone, 5, dim=dim, n_negatives=k, momentum=0.9, mlp=False).double()


def _views(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64),
            torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64))


def _bank_loss(q, pos, bank, tau):
    """Mean ``−log e^{s⁺/τ} / (e^{s⁺/τ} + Σₖ e^{q·m̂ₖ/τ})`` written out, bank rows normalised."""
    num = torch.exp(pos / tau)
    den = num + torch.exp(q @ F.normalize(bank, dim=1).T / tau).sum(1)
    return (-torch.log(num / den)).mean()


def _hand_gradient(q, pos, bank, tau):
    """dL/dM: softmax weight pₙₖ of negative k, dL/dm̂ₖ = Σₙ pₙₖ qₙ / (N τ), then through m̂ = M/‖M‖."""
    m_hat = F.normalize(bank, dim=1)
    logits = torch.cat([pos[:, None], q @ m_hat.T], 1) / tau
    p = torch.softmax(logits, 1)[:, 1:]
    d_hat = p.T @ q / (len(q) * tau)
    norms = bank.norm(dim=1, keepdim=True)
    return (d_hat - (d_hat * m_hat).sum(1, keepdim=True) * m_hat) / norms


@pytest.mark.parametrize("tau_neg", [0.05, 0.2])
def test_one_ascent_step_follows_the_hand_gradient_and_raises_the_bank_loss(tau_neg):
    model = _tiny_adco()
    x1, x2 = _views()
    pos, neg = model(x1, x2)
    q = model.project(x1).detach()
    bank0 = model.negatives.detach().clone()
    before = _bank_loss(q, pos.detach(), bank0, tau_neg)
    returned = adco_negative_step(model, pos, lr_neg=0.05, tau_neg=tau_neg)
    assert torch.allclose(returned, before, atol=1e-12)
    step = model.negatives.detach() - bank0
    assert torch.allclose(step, 0.05 * _hand_gradient(q, pos.detach(), bank0, tau_neg), atol=1e-12)
    assert _bank_loss(q, pos.detach(), model.negatives.detach(), tau_neg) > before


@pytest.mark.parametrize("step_first", [False, True])
def test_the_bank_gets_no_encoder_gradient_and_the_step_may_come_before_or_after_backward(step_first):
    x1, x2 = _views()
    reference = _tiny_adco()
    pos, neg = reference(x1, x2)
    F.cross_entropy(torch.cat([pos[:, None], neg], 1) / 0.2, torch.zeros(len(pos), dtype=torch.long)).backward()
    adco_negative_step(reference, pos, lr_neg=1.0, tau_neg=0.05)
    model = _tiny_adco()
    pos, neg = model(x1, x2)
    loss = F.cross_entropy(torch.cat([pos[:, None], neg], 1) / 0.2, torch.zeros(len(pos), dtype=torch.long))
    if step_first:
        adco_negative_step(model, pos, lr_neg=1.0, tau_neg=0.05)
    loss.backward()
    if not step_first:
        adco_negative_step(model, pos, lr_neg=1.0, tau_neg=0.05)
    assert model.negatives.grad is None and not model.negatives.requires_grad
    assert torch.equal(model.negatives, reference.negatives)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n != "negatives" for n, _ in trained)
    for (_, a), b in zip(trained, [p for p in reference.parameters() if p.requires_grad]):
        assert torch.equal(a.grad, b.grad)


def test_config_builds_adco_with_k_by_dim_more_parameters_than_moco_v2():
    config = cfg.from_dict(VisionConfig, {"method": "adco", "moco": {"dim": 128, "queue_size": 4096},
                                          "adco": {"n_negatives": 4096}})
    adco, moco = build_model(config, 32), build_model(cfg.from_dict(VisionConfig, {"method": "moco"}), 32)
    assert isinstance(adco, AdCo) and type(moco) is MoCoV2
    count = lambda m, trained: sum(p.numel() for p in m.parameters() if p.requires_grad or not trained)  # noqa: E731
    assert count(adco, False) - count(moco, False) == 4096 * 128
    assert count(adco, True) == count(moco, True)  # the bank is not trained by the encoder's optimiser
    with pytest.raises(UserError, match="tau_neg"):
        cfg.from_dict(VisionConfig, {"method": "adco", "adco": {"tau_neg": 0}})


def test_forward_is_cosine_to_momentum_keys_and_normalised_bank():
    model = _tiny_adco()
    x1, x2 = _views()
    key_encoder = copy.deepcopy(model.moco.encoder_k)
    query_encoder = copy.deepcopy(model.moco.encoder_q)
    with torch.no_grad():  # the momentum update happens before the keys are computed
        for pk, pq in zip(key_encoder.parameters(), query_encoder.parameters()):
            pk.mul_(0.9).add_(0.1 * pq)
        q = F.normalize(query_encoder(x1), dim=1)
        k = F.normalize(key_encoder(x2), dim=1)
        pos, neg = model(x1, x2)
    assert torch.allclose(pos, (q * k).sum(1)) and torch.allclose(neg, q @ F.normalize(model.negatives, dim=1).T)
