"""Pretraining configuration of the context-aware MoCo-v2 (YAML in ``configs/pretrain/``).

Resolution order: the pretrain YAML, then the cohort's ``pretrain_overrides``
(what its size needs, e.g. the demo's short schedule), then CLI flags, then
``--set``. The resolved config is written to ``RUN/config.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from copd_ifm.contrastive.losses import LossConfig
from copd_ifm.contrastive.optim import OptimConfig


@dataclass
class ModelConfig:
    """Patch encoder (3-D CNN) and graph encoder (GCN) widths.

    ``encoder: anchor`` is the anchor's trunk (``channels`` [8, 16, 32, 64] then
    ``feat_dim`` 128: 13 convolutions down to 1³ at 32³), location joined only
    to the projection head; ``compact`` is a stride-2 stage per ``channels``
    entry, with the location inside the encoder (the demo's; the default here so
    that run folders written before the option existed load unchanged).
    """

    encoder: str = "compact"     # anchor | compact
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # conv widths before the feat_dim block
    feat_dim: int = 128          # patch / node feature width (the anchor: 128)
    embed_dim: int = 128         # MoCo embedding width
    mlp_head: bool = True        # MoCo-v2 MLP head
    use_location: bool = True    # join normalised atlas coordinates (anchor: head input 131; compact: in the encoder)

    def validate(self) -> None:
        if self.encoder not in {"anchor", "compact"}:
            raise ValueError(f"model.encoder must be anchor or compact, got {self.encoder!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError("model.channels must be a non-empty list of positive widths")


@dataclass
class MoCoSettings:
    """MoCo-v2 at both levels."""

    momentum: float = 0.999
    patch_queue: int = 4096       # keys per landmark queue
    graph_queue: int = 4096       # keys in the subject queue
    per_landmark_queue: bool = True  # False: one shared patch queue

    def validate(self) -> None:
        if not 0 <= self.momentum < 1:
            raise ValueError(f"moco.momentum must be in [0, 1), got {self.momentum}")


@dataclass
class AugmentConfig:
    """Batched 3-D augmentation with the anchor's MONAI settings; lengths in voxels of a 32³ patch.

    Order and draws as the anchor's ``Compose([RandAdjustContrast, RandGaussianNoise,
    Rand3DElastic])``: contrast, then noise, then the deformation. Lengths are
    scaled to the patch size ``P`` (a 16³ patch at 2 mm gets the same
    deformation in mm as a 32³ one at 1 mm).
    """

    rotate_deg: float = 10.0       # the anchor: π/18 per axis
    scale: float = 0.1
    translate_vox: float = 12.0
    # Rand3DElastic: uniform(−1, 1) offsets per voxel, Gaussian-smoothed with σ ~ U(elastic_sigma),
    # times a magnitude ~ U(elastic_magnitude) (voxels); the anchor: σ 8–12, magnitude 0–1264.
    elastic_sigma: list[float] = field(default_factory=lambda: [8.0, 12.0])
    elastic_magnitude: list[float] = field(default_factory=lambda: [0.0, 1264.0])
    noise_hu: float = 50.0         # Gaussian noise sd drawn from U(0, noise_hu) HU, applied with p_noise
    p_noise: float = 0.25
    gamma_range: list[float] = field(default_factory=lambda: [0.5, 4.5])  # MONAI's default, applied with p_contrast
    p_contrast: float = 0.25
    # Graph views in "feature" mode (see ScheduleConfig.graph_views): node dropout and feature noise.
    node_drop: float = 0.1
    feature_noise: float = 0.1     # sd as a fraction of each feature's sd over the cohort

    def validate(self) -> None:
        for name in ("elastic_sigma", "elastic_magnitude", "gamma_range"):
            pair = getattr(self, name)
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                raise ValueError(f"augment.{name} must be [low, high] with 0 <= low <= high, got {pair}")
        if self.elastic_sigma[0] <= 0:
            raise ValueError(f"augment.elastic_sigma must be > 0, got {self.elastic_sigma}")


@dataclass
class ScheduleConfig:
    """The anchor's schedule: each epoch is one patch epoch then ``graph_subepochs`` graph epochs."""

    epochs: int = 50
    graph_subepochs: int = 10
    patch_batch: int = 128          # patches of one landmark per step (capped by the cohort size)
    graph_batch: int = 16           # subjects per graph step
    landmarks_per_epoch: int = 0    # 0 = every landmark each patch epoch
    # "patch": each subject view is its augmented CT patches re-encoded by the frozen patch encoder
    # (the anchor). "feature": patches are encoded once per epoch without augmentation and views
    # are made by node dropout + feature noise (far cheaper on a CPU).
    graph_views: str = "patch"
    patch_level: bool = True
    graph_level: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"schedule.epochs must be >= 1, got {self.epochs}")
        if self.patch_batch < 2 or self.graph_batch < 2:
            raise ValueError("schedule.patch_batch and graph_batch must be >= 2")
        if self.graph_views not in {"patch", "feature"}:
            raise ValueError(f"schedule.graph_views must be patch or feature, got {self.graph_views!r}")


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the cohort."""

    name: str = "pretrain"
    seed: int = 0
    device: str = "auto"
    amp: bool = True                # float16 autocast on CUDA
    workers: int = 2                # data-loading processes
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MoCoSettings = field(default_factory=MoCoSettings)
    # ε defaults to 0 (the baseline) here as in every config class; IFM is chosen by the config (ifm*.yaml) or
    # --ifm-eps, never by an omitted field.
    loss: LossConfig = field(default_factory=lambda: LossConfig(temperature=0.2))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    # Context graph of the graph level: "lattice" (the atlas's face-neighbour graph, every subject alike) or
    # "subject" (the anchor's overlap rule on each subject's mapped corners, centers/<sid>.npy).
    graph: str = "lattice"

    def validate(self) -> None:
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.graph not in {"lattice", "subject"}:
            raise ValueError(f"graph must be lattice or subject, got {self.graph!r}")
