"""AdCo as ``maple-research-lab/AdCo`` runs it, against a float64 transcription of its update equations.

The reference below writes the official ``training/train.py`` (``update_network``, ``init_memory``) and
``model/AdCo.py`` (``Adversary_Negatives.update``) out again in their own layout (bank ``W`` ``[dim, K]``,
explicit gradient formula, logits with the gathered batch keys first and the label at the query's own key);
the model stores ``W`` transposed and differentiates with autograd, so agreement to 1e-10 checks the
equations, the momentum, the weight decay and the in-batch negatives, not a shared implementation.
"""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from copd_ifm import config as cfg
from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.errors import UserError
from natural_images.config import VisionConfig
from natural_images.methods import AdCo, MoCoV2, adco_fill_bank, adco_negative_step, build_model
from natural_images.run import default_config_name, load_model, load_vision_config

MOCO_T, MEM_T, MEM_LR, MOMENTUM, MEM_WD = 0.12, 0.02, 3.0, 0.9, 1e-4


def _tiny_adco(k: int = 6, dim: int = 4, ad_init: bool = False) -> AdCo:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    return AdCo(backbone, 5, dim=dim, n_negatives=k, momentum=0.9, mlp=False, ad_init=ad_init).double()


def _views(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64),
            torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64))


# --- the official equations, transcribed ------------------------------------------------------------------


def official_encoder_loss(q, k_all, W, rank=0):
    """``update_network``: logits ``[q·k_allᵀ, q·normalize(W, dim=0)] / moco_t``, label = own key column."""
    l_pos = q @ k_all.T
    l_neg = q @ F.normalize(W, dim=0)
    labels = torch.arange(rank * len(q), (rank + 1) * len(q))
    return F.cross_entropy(torch.cat([l_pos, l_neg], 1) / MOCO_T, labels)


def official_bank_update(q, k_all, W, v, world=1):
    """``update_network``'s memory step: ``g = −∂L/∂W`` written out, then ``v ← m·v + g + wd·W``,
    ``W ← W − lr·v`` (one process; ``world`` > 1 is handled by the caller averaging ``g``)."""
    d_norm = F.normalize(W, dim=0)
    l_pos, l_neg = q @ k_all.T, q @ d_norm
    logits = torch.cat([l_pos, l_neg], 1) / MEM_T
    total_bsize = logits.shape[1] - W.shape[1]
    p_qd = torch.softmax(logits, 1)[:, total_bsize:]
    g = q.T @ p_qd / logits.shape[0] - (p_qd * l_neg).mean(0) * d_norm
    g = -g / W.norm(dim=0) / MEM_T
    v = MOMENTUM * v + g + MEM_WD * W
    return W - MEM_LR * v, v


def official_init_loss(q, k, W):
    """``init_memory``: only the query's own key is a positive and the (partly filled) bank the negatives."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ F.normalize(W, dim=0)], 1) / MOCO_T
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def _step_bank(model, pos, neg):
    return adco_negative_step(model, pos, neg, MEM_LR, MEM_T, MOMENTUM, MEM_WD)


# --- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 6])
def test_encoder_loss_and_bank_steps_match_the_official_equations(n_steps):
    model = _tiny_adco()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9)
    W, v = model.negatives.detach().T.clone(), torch.zeros(4, 6, dtype=torch.float64)
    for i in range(n_steps):
        x1, x2 = _views(seed=i)
        pos, neg = model(x1, x2)
        assert neg.shape == (3, 3 - 1 + 6)  # the other two keys of the batch, then the bank
        loss = ContrastiveLoss(MOCO_T)(pos, neg)
        q, k_all = model.last_query, model.last_keys
        assert abs(loss.item() - official_encoder_loss(q, k_all, W).item()) < 1e-10
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _step_bank(model, pos, neg)
        W, v = official_bank_update(q, k_all, W, v)
        assert torch.allclose(model.negatives.T, W, atol=1e-10, rtol=0), i
        assert torch.allclose(model.bank_velocity.T, v, atol=1e-10, rtol=0), i


def test_without_momentum_and_decay_the_step_is_plain_ascent_and_raises_the_bank_loss():
    model = _tiny_adco()
    pos, neg = model(*_views())
    bank0 = model.negatives.detach().clone()
    before = adco_negative_step(model, pos, neg, lr_neg=0.01, tau_neg=0.05, momentum=0.0, weight_decay=0.0)
    after = adco_negative_step(copy.deepcopy(model), pos, neg, lr_neg=0.0, tau_neg=0.05, momentum=0.0,
                               weight_decay=0.0)
    assert after > before and not torch.equal(model.negatives, bank0)


def test_ad_init_trains_against_the_bank_alone_fills_it_in_order_then_resets_the_key_encoder():
    model = _tiny_adco(k=5, ad_init=True)
    assert int(model.bank_filled) == 0
    W = model.negatives.detach().T.clone()
    filled = []
    for i in range(2):  # 3 + 3 keys for 5 rows: the second batch's last key is dropped, as in the official loop
        pos, neg = model(*_views(seed=10 + i), warmup=True)
        assert neg.shape == (3, 5)
        q, k = model.last_query, model.last_keys
        assert abs(ContrastiveLoss(MOCO_T)(pos, neg).item() - official_init_loss(q, k, W).item()) < 1e-10
        ContrastiveLoss(MOCO_T)(pos, neg).backward()  # the encoder trains during the warm-up
        end = min((i + 1) * 3, 5)
        W[:, i * 3:end] = k[:end - i * 3].T
        adco_fill_bank(model)
        filled.append(int(model.bank_filled))
        assert torch.equal(model.negatives.T, W)
    assert filled == [3, 5]
    for pk, pq in zip(model.moco.encoder_k.parameters(), model.moco.encoder_q.parameters()):
        assert torch.equal(pk, pq)


@pytest.mark.parametrize("step_first", [False, True])
def test_the_bank_gets_no_encoder_gradient_and_the_step_may_come_before_or_after_backward(step_first):
    x1, x2 = _views()
    reference = _tiny_adco()
    pos, neg = reference(x1, x2)
    ContrastiveLoss(0.2)(pos, neg).backward()
    _step_bank(reference, pos, neg)
    model = _tiny_adco()
    pos, neg = model(x1, x2)
    loss = ContrastiveLoss(0.2)(pos, neg)
    if step_first:
        _step_bank(model, pos, neg)
    loss.backward()
    if not step_first:
        _step_bank(model, pos, neg)
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
    with pytest.raises(UserError, match="momentum"):
        cfg.from_dict(VisionConfig, {"method": "adco", "adco": {"momentum": 1.0}})


def test_adco_configs_carry_the_official_settings_and_are_the_default_for_method_adco():
    assert default_config_name(None, "adco") == "cifar10_adco"
    banks = {"imagenet100": 65536, "cifar10": 8192, "cifar100": 8192, "stl10": 16384, "tinyimagenet": 16384}
    for dataset, k in banks.items():
        c, moco = load_vision_config(f"{dataset}_adco"), load_vision_config(f"{dataset}_moco")
        assert c.method == "adco" and c.adco.n_negatives == k and c.adco.ad_init
        assert (c.loss.temperature, c.moco.momentum, c.adco.lr_neg, c.adco.tau_neg) == (0.12, 0.999, 3.0, 0.02)
        assert (c.adco.momentum, c.adco.weight_decay) == (0.9, 1e-4)
        assert c.data == moco.data and c.augment == moco.augment and c.linear == moco.linear
    official = load_vision_config("imagenet100_adco")
    assert (official.batch_size, official.optim.lr, official.optim.weight_decay) == (256, 0.03, 1e-4)


def test_forward_is_cosine_to_own_key_then_other_batch_keys_then_normalised_bank():
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
    assert torch.allclose(pos, (q * k).sum(1))
    others = torch.stack([torch.stack([q[i] @ k[j] for j in range(3) if j != i]) for i in range(3)])
    assert torch.allclose(neg[:, :2], others)
    assert torch.allclose(neg[:, 2:], q @ F.normalize(model.negatives, dim=1).T)


@pytest.mark.slow
def test_training_runs_the_ad_init_pass_once_then_refuses_a_bank_one_epoch_cannot_fill(tmp_path):
    from tests.vision.test_datasets import write_cifar10
    from natural_images.train import pretrain

    write_cifar10(tmp_path / "data")  # 20 images: 2 steps of 8 per epoch
    items = [f"data.root={tmp_path / 'data'}", "data.verify=false", "data.crop_size=8", "data.eval_size=8",
             "knn.every=0", "method=adco", "adco.n_negatives=12", "epochs=2"]
    pretrain(load_vision_config("cpu_tiny", overrides=items), tmp_path / "run", device="cpu")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics[metrics["key"] == "adco_init_loss"]["step"].tolist() == [1, 2]  # ceil(12 / 8), epoch 1 only
    assert metrics[metrics["key"] == "loss"]["step"].tolist() == [3, 4, 5, 6]
    history = json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_done"]
    assert history == 2
    # a checkpoint without the bank's momentum (an AdCo run of an older version) is named, not a traceback
    ckpt = Checkpointer(tmp_path / "run")
    state = ckpt.load()
    del state["model"]["bank_velocity"]
    ckpt.save(state)
    with pytest.raises(UserError, match="lacks bank_velocity .*retrain"):
        load_model(tmp_path / "run")
    with pytest.raises(UserError, match="ad_init"):
        pretrain(load_vision_config("cpu_tiny", overrides=items[:-2] + ["method=adco", "adco.n_negatives=64"]),
                 tmp_path / "big", device="cpu")
