"""The IFM contrastive engine: domain-free (torch and torch.distributed only).

``from copd_ifm.contrastive import info_nce, ifm_loss, nt_xent, MoCo``.
"""
from copd_ifm.contrastive.losses import (
    ContrastiveLoss,
    LossConfig,
    hard_negative_from_similarities,
    ifm_loss,
    ifm_objective,
    info_nce,
    info_nce_from_similarities,
    instance_accuracy,
    nt_xent,
    perturb,
    simclr_similarities,
    similarities,
)
from copd_ifm.contrastive.moco import MoCo, MoCoOutput, projection_head

__all__ = [
    "ContrastiveLoss", "LossConfig", "MoCo", "MoCoOutput", "hard_negative_from_similarities", "ifm_loss", "ifm_objective",
    "info_nce", "info_nce_from_similarities", "instance_accuracy", "nt_xent", "perturb", "projection_head",
    "simclr_similarities", "similarities",
]
