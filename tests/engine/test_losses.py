"""IFM losses against independent computations (cross-entropy, explicit perturbations, closed forms)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from copd_ifm.contrastive import (
    ContrastiveLoss,
    hard_negative_from_similarities,
    ifm_loss,
    info_nce,
    nt_xent,
    simclr_similarities,
)
from tests.helpers import brute_nt_xent


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_epsilon_zero_equals_cross_entropy_on_hand_built_logits():
    q, kp, kn = _unit(5, 8, seed=1), _unit(5, 8, seed=2), _unit(7, 8, seed=3)
    logits = torch.cat([(q * kp).sum(1, keepdim=True), q @ kn.T], dim=1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(info_nce(q, kp, kn, 0.2), expected, atol=1e-10)


def test_inputs_are_normalised_inside():
    q, kp, kn = _unit(4, 6, seed=1), _unit(4, 6, seed=2), _unit(9, 6, seed=3)
    assert torch.allclose(info_nce(3 * q, 0.5 * kp, 7 * kn, 0.1, 0.1), info_nce(q, kp, kn, 0.1, 0.1))


def test_per_query_negatives_match_shared_negatives():
    q, kp, kn = _unit(4, 6, seed=1), _unit(4, 6, seed=2), _unit(9, 6, seed=3)
    assert torch.allclose(info_nce(q, kp, kn.expand(4, 9, 6), 0.3, 0.2), info_nce(q, kp, kn, 0.3, 0.2))


def _loss_from_embeddings(q, kp, kn, tau):
    """Plain InfoNCE on explicitly given (not re-normalised) keys, per query."""
    pos = (q * kp).sum(-1)
    neg = torch.einsum("nd,nkd->nk", q, kn)
    logits = torch.cat([pos[:, None], neg], 1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction="none")


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_ifm_equals_explicit_worst_case_perturbation(eps):
    n, k, d, tau = 6, 10, 16, 0.2
    q, kp, kn = _unit(n, d, seed=4), _unit(n, d, seed=5), _unit(n, k, d, seed=6)
    closed = info_nce(q, kp, kn, tau, epsilon=eps)
    explicit = _loss_from_embeddings(q, kp - eps * q, kn + eps * q[:, None, :], tau).mean()
    assert torch.allclose(closed, explicit, atol=1e-10)


def test_random_perturbations_in_the_ball_never_exceed_closed_form():
    n, k, d, tau, eps = 4, 6, 8, 0.5, 0.2
    q, kp, kn = _unit(n, d, seed=7), _unit(n, d, seed=8), _unit(n, k, d, seed=9)
    worst = _loss_from_embeddings(q, kp - eps * q, kn + eps * q[:, None, :], tau)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        dp = torch.randn(n, d, generator=g, dtype=torch.float64)
        dn = torch.randn(n, k, d, generator=g, dtype=torch.float64)
        dp = eps * dp / dp.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64)
        dn = eps * dn / dn.norm(dim=-1, keepdim=True) * torch.rand(n, k, 1, generator=g, dtype=torch.float64)
        assert torch.all(_loss_from_embeddings(q, kp + dp, kn + dn, tau) <= worst + 1e-12)


def test_per_negative_budgets():
    q, kp, kn = _unit(3, 5, seed=1), _unit(3, 5, seed=2), _unit(4, 5, seed=3)
    eps = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    pos = (q * kp).sum(1) - eps.mean()
    neg = q @ kn.T + eps
    expected = F.cross_entropy(torch.cat([pos[:, None], neg], 1) / 0.2, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(info_nce(q, kp, kn, 0.2, epsilon=eps), expected)


def test_gradients_point_along_query():
    q = _unit(1, 8, seed=11)[0]
    kp = _unit(1, 8, seed=12).requires_grad_(True)
    kn = _unit(5, 8, seed=13).requires_grad_(True)
    # Gradients with respect to the similarities (keys used raw, as in the paper's Sec. 3).
    pos = kp @ q
    neg = kn @ q
    loss = F.cross_entropy(torch.cat([pos, neg])[None] / 0.1, torch.zeros(1, dtype=torch.long))
    loss.backward()
    for grad, sign in [(kp.grad[0], -1.0), *[(kn.grad[j], 1.0) for j in range(5)]]:
        cos = F.cosine_similarity(grad, q, dim=0)
        assert math.isclose(cos.item(), sign, abs_tol=1e-9)


def test_ifm_loss_is_average_with_alpha():
    q, kp, kn = _unit(6, 8, seed=1), _unit(6, 8, seed=2), _unit(12, 8, seed=3)
    for alpha in (1.0, 0.5, 2.0):
        expected = (info_nce(q, kp, kn, 0.2) + alpha * info_nce(q, kp, kn, 0.2, 0.1)) / 2
        assert torch.allclose(ifm_loss(q, kp, kn, 0.2, 0.1, alpha), expected)
    assert torch.allclose(ifm_loss(q, kp, kn, 0.2, 0.0), info_nce(q, kp, kn, 0.2))


def test_ifm_loss_exceeds_baseline():
    q, kp, kn = _unit(6, 8, seed=1), _unit(6, 8, seed=2), _unit(12, 8, seed=3)
    assert info_nce(q, kp, kn, 0.2, 0.1) > info_nce(q, kp, kn, 0.2)


def test_nt_xent_matches_brute_force_and_has_2n_minus_2_negatives():
    z1, z2 = _unit(5, 6, seed=1), _unit(5, 6, seed=2)
    pos, neg = simclr_similarities(z1, z2)
    assert pos.shape == (10,) and neg.shape == (10, 8)
    assert torch.allclose(nt_xent(z1, z2, 0.5), brute_nt_xent(z1, z2, 0.5))
    ifm = (brute_nt_xent(z1, z2, 0.5) + brute_nt_xent(z1, z2, 0.5, 0.1)) / 2
    assert torch.allclose(nt_xent(z1, z2, 0.5, epsilon=0.1), ifm)


def _masked_simclr_similarities(z1, z2):
    """The boolean-mask formulation ``simclr_similarities`` had before it became a gather (the reference)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T
    idx = torch.arange(2 * n)
    partner = (idx + n) % (2 * n)
    keep = torch.ones_like(sim, dtype=torch.bool)
    keep[idx, idx] = False
    keep[idx, partner] = False
    return sim[idx, partner], sim[keep].view(2 * n, 2 * n - 2)


@pytest.mark.parametrize("n,dtype", [(1, torch.float32), (2, torch.float64), (7, torch.float32), (33, torch.float32)])
def test_simclr_similarities_equal_the_masked_formulation_in_values_and_gradients(n, dtype):
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, 16, generator=g, dtype=dtype, requires_grad=True)
    z2 = torch.randn(n, 16, generator=g, dtype=dtype, requires_grad=True)
    (pos, neg), (ref_pos, ref_neg) = simclr_similarities(z1, z2), _masked_simclr_similarities(z1, z2)
    assert torch.equal(pos, ref_pos) and torch.equal(neg, ref_neg)
    w_pos = torch.randn(ref_pos.shape, generator=g, dtype=dtype)
    w_neg = torch.randn(ref_neg.shape, generator=g, dtype=dtype)
    grads = torch.autograd.grad((pos * w_pos).sum() + (neg * w_neg).sum(), (z1, z2))
    ref = torch.autograd.grad((ref_pos * w_pos).sum() + (ref_neg * w_neg).sum(), (z1, z2))
    assert all(torch.equal(a, b) for a, b in zip(grads, ref))
    # The losses on top are equal too (same similarities in the same order).
    assert torch.equal(nt_xent(z1, z2, 0.2, epsilon=0.1), ContrastiveLoss(0.2, 0.1)(ref_pos, ref_neg))


def _brute_hcl(pos, neg, tau, beta, tau_plus):
    pos_e = torch.exp(pos / tau)
    neg_e = torch.exp(neg / tau)
    imp = neg_e ** beta
    r = (imp * neg_e).sum(1) / imp.mean(1)
    m = neg.shape[1]
    ng = torch.clamp((r - tau_plus * m * pos_e) / (1 - tau_plus), min=m * math.exp(-1 / tau))
    return (-torch.log(pos_e / (pos_e + ng))).mean()


@pytest.mark.parametrize("beta,tau_plus", [(0.0, 0.0), (1.0, 0.1), (0.5, 0.05), (2.0, 0.0)])
def test_hard_negative_matches_direct_formula(beta, tau_plus):
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(8, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(8, 14, generator=g, dtype=torch.float64) * 2 - 1
    got = hard_negative_from_similarities(pos, neg, 0.5, beta, tau_plus)
    assert torch.allclose(got.double(), _brute_hcl(pos, neg, 0.5, beta, tau_plus), rtol=1e-5)


def test_hard_negative_beta0_is_info_nce_and_stable_at_extremes():
    z1, z2 = _unit(6, 8, seed=1), _unit(6, 8, seed=2)
    pos, neg = simclr_similarities(z1, z2)
    base = ContrastiveLoss(0.5)(pos, neg)
    assert torch.allclose(hard_negative_from_similarities(pos, neg, 0.5, 0.0, 0.0).double(), base, rtol=1e-6)
    extreme = hard_negative_from_similarities(pos.float(), neg.float(), 0.05, beta=4.0, tau_plus=0.1)
    assert torch.isfinite(extreme)


def test_contrastive_loss_module_baseline_and_ifm():
    pos, neg = simclr_similarities(_unit(6, 8, seed=1), _unit(6, 8, seed=2))
    base = ContrastiveLoss(0.2, epsilon=0.0)(pos, neg)
    ifm = ContrastiveLoss(0.2, epsilon=0.1)(pos, neg)
    adv = ContrastiveLoss(0.2)(pos - 0.1, neg + 0.1)
    assert torch.allclose(ifm, (base + adv) / 2)


def _closed_form_l_eps(pos, neg, tau, eps):
    """``−log e^{(s⁺−ε)/τ} / (e^{(s⁺−ε)/τ} + Σᵢ e^{(sᵢ+ε)/τ})`` per row, written out term by term."""
    num = torch.exp((pos - eps) / tau)
    return (-torch.log(num / (num + torch.exp((neg + eps) / tau).sum(1)))).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ifm_only_is_info_nce_on_the_perturbed_logits(eps):
    pos, neg = simclr_similarities(_unit(5, 8, seed=1), _unit(5, 8, seed=2))
    for alpha in (1.0, 3.0):  # α plays no part in L_ε alone
        got = ContrastiveLoss(0.2, epsilon=eps, alpha=alpha, ifm_only=True)(pos, neg)
        assert torch.allclose(got, _closed_form_l_eps(pos, neg, 0.2, eps), atol=1e-12)
    hard = ContrastiveLoss(0.5, epsilon=eps, beta=1.0, tau_plus=0.1, ifm_only=True)(pos, neg)
    assert torch.allclose(hard, _brute_hcl(pos - eps, neg + eps, 0.5, 1.0, 0.1), rtol=1e-6)


def test_alpha_normalisation_divides_by_two_and_matches_official_only_at_alpha_one():
    pos, neg = simclr_similarities(_unit(6, 8, seed=3), _unit(6, 8, seed=4))
    base, adv = _closed_form_l_eps(pos, neg, 0.2, 0.0), _closed_form_l_eps(pos, neg, 0.2, 0.1)
    for alpha in (0.5, 1.0, 3.0):
        ours = ContrastiveLoss(0.2, epsilon=0.1, alpha=alpha)(pos, neg)
        official = (base + alpha * adv) / (1 + alpha)
        assert torch.allclose(ours, (base + alpha * adv) / 2, atol=1e-12)
        assert torch.allclose(ours, official, atol=1e-12) == (alpha == 1.0)


def test_sgd_step_at_lr_equals_official_step_at_lr_times_one_plus_alpha_over_two():
    z1, z2 = _unit(6, 8, seed=5), _unit(6, 8, seed=6)
    alpha, lr = 3.0, 0.1

    def step(loss_fn, rate):
        w = z1.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=rate)
        loss_fn(*simclr_similarities(w, z2)).backward()
        opt.step()
        return w.detach()

    ours = step(ContrastiveLoss(0.2, epsilon=0.1, alpha=alpha), lr)

    def official(pos, neg):
        return (_closed_form_l_eps(pos, neg, 0.2, 0.0) + alpha * _closed_form_l_eps(pos, neg, 0.2, 0.1)) / (1 + alpha)

    assert torch.allclose(ours, step(official, lr * (1 + alpha) / 2), atol=1e-12)
    assert not torch.allclose(ours, step(official, lr), atol=1e-6)
