"""Typed configuration of a vision run (``configs/vision/*.yaml``).

One YAML holds everything a run needs: data, augmentation, backbone, method
(SimCLR, MoCo-v2 or AdCo), loss (temperature, IFM ε/α, hard-negative β/τ⁺),
optimiser, kNN monitor and linear read-out. The resolved config is saved as
``RUN/config.yaml`` and is what ``vision linear`` and ``--resume`` read back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.contrastive.losses import LossConfig
from copd_ifm.contrastive.optim import OptimConfig

VISION_CONFIG_DIR = cfg.CONFIG_DIR / "vision"
METHODS = ("simclr", "moco", "adco")


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    root: str = "{data_home}/vision"       # folder holding every dataset (torchvision's ``root``)
    download: bool = False                 # fetch CIFAR/STL10/tinyImageNet if missing (needs internet)
    workers: int = 4                       # DataLoader worker processes per rank
    crop_size: int | None = None           # training crop (px); None: the dataset's native resolution
    eval_size: int | None = None           # evaluation resolution (px); None: native
    limit: int = 0                         # use at most this many images per split, evenly spaced (0: all)
    classes: str | None = None             # text file of class folder names to keep (folder, imagenet100)
    verify: bool = True                    # md5-check CIFAR/STL10 files (false: existence only)

    def validate(self) -> None:
        if self.workers < 0 or self.limit < 0:
            raise ValueError(f"workers and limit must be >= 0, got {self.workers}, {self.limit}")
        for name in ("crop_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"{name} must be >= 8 px, got {value}")

    @property
    def root_path(self) -> Path:
        return files.expand_home(self.root)


@dataclass
class AugmentConfig:
    """SimCLR / MoCo-v2 "aug-plus" view generation (probabilities in [0, 1])."""

    crop_scale: tuple[float, float] | None = None   # RandomResizedCrop area; None: SimCLR (0.08, 1), MoCo (0.2, 1)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)   # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5                 # Gaussian blur, kernel ≈ 10 % of the crop (odd), σ in blur_sigma
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    device: str = "auto"                   # auto (batched on CUDA for in-memory datasets), cpu (loader), gpu (batched)

    def validate(self) -> None:
        if self.device not in {"auto", "cpu", "gpu"}:
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")


@dataclass
class ModelConfig:
    arch: str = "resnet18"                 # any torchvision resnet: resnet18, resnet34, resnet50, ...
    stem: str = "auto"                     # auto (CIFAR stem for crops <= 96 px), cifar, imagenet
    width: float = 1.0                     # channel multiplier (0.25: 16 base channels, 1/16 of the compute)

    def validate(self) -> None:
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if not self.arch.startswith(("resnet", "wide_resnet", "resnext")):
            raise ValueError(f"arch must be a torchvision ResNet (resnet18, resnet50, ...), got {self.arch!r}")
        if self.stem not in {"auto", "cifar", "imagenet"}:
            raise ValueError(f"stem must be auto, cifar or imagenet, got {self.stem!r}")


@dataclass
class SimCLRConfig:
    dim: int = 128                         # embedding width
    hidden: int = 512                      # head: feat → hidden (BN, ReLU) → dim, as in the hard-negative code
    sync_bn: bool = False                  # SyncBatchNorm across ranks under DDP (CUDA only)


@dataclass
class MoCoConfig:
    dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.99
    mlp: bool = True                       # MoCo-v2 MLP head (feat → feat → dim)
    shuffle_bn: bool = True

    def validate(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class AdCoConfig:
    """AdCo's learnable negatives (``maple-research-lab/AdCo`` defaults); the encoders, head and key momentum
    come from the ``moco`` section, the encoder temperature from ``loss``."""

    n_negatives: int = 65536               # bank size K (rows [K, moco.dim]); official --cluster
    lr_neg: float = 3.0                    # bank SGD rate (official --memory_lr, constant)
    tau_neg: float = 0.02                  # temperature of the bank's loss (official --mem_t)
    momentum: float = 0.9                  # bank SGD momentum (official: --momentum, shared with the encoder)
    weight_decay: float = 1.0e-4           # bank weight decay (official --mem_wd)
    ad_init: bool = True                   # fill the bank with keys in a first pass, training the encoder

    def validate(self) -> None:
        if self.n_negatives < 1 or self.lr_neg <= 0 or self.tau_neg <= 0:
            raise ValueError(f"need n_negatives >= 1, lr_neg > 0, tau_neg > 0; got {self.n_negatives}, "
                             f"{self.lr_neg}, {self.tau_neg}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"need 0 <= momentum < 1 and weight_decay >= 0; got {self.momentum}, "
                             f"{self.weight_decay}")


@dataclass
class KNNConfig:
    every: int = 1                         # epochs between kNN evaluations (0: only after the last epoch)
    k: int = 200
    temperature: float = 0.1

    def validate(self) -> None:
        if self.every < 0 or self.k < 1 or self.temperature <= 0:
            raise ValueError(f"need every >= 0, k >= 1, temperature > 0; got {self.every}, {self.k}, "
                             f"{self.temperature}")


@dataclass
class LinearConfig:
    """Linear classifier on the frozen encoder: on cached features (default) or on augmented images (``augment``)."""

    epochs: int = 100
    batch_size: int = 512
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3, weight_decay=1e-6))
    milestones: list[int] = field(default_factory=list)   # step decay ×0.1 at these epochs (replaces optim.schedule)
    standardize: bool = False              # z-score features with the training split's mean and sd first
    augment: bool = False                  # official protocol: train on RandomResizedCrop + flip views, encoded
                                           # on the fly (slow); False: features cached once, no augmentation

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.augment and self.standardize:
            raise ValueError("linear.augment and linear.standardize exclude each other (the statistics need "
                             "cached features); set one to false")

    @property
    def readout(self) -> str:
        """How the classifier was trained, for every report that quotes its accuracy."""
        return ("augmented images (official protocol: RandomResizedCrop + flip through the frozen encoder)"
                if self.augment else "cached features (eval transform, no augmentation)")


@dataclass
class VisionConfig:
    method: str = "simclr"                 # simclr | moco | adco
    epochs: int = 400
    batch_size: int = 256                  # global batch (split evenly over ranks)
    seed: int = 0
    amp: bool = True                       # float16 autocast + grad scaling (CUDA only)
    channels_last: bool = True             # NHWC memory format (CUDA only)
    log_every: int = 50                    # steps between step-level log rows
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(temperature=0.5))
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    adco: AdCoConfig = field(default_factory=AdCoConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3, weight_decay=1e-6))
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.log_every < 1:
            raise ValueError(f"need epochs >= 1, batch_size >= 2, log_every >= 1; got {self.epochs}, "
                             f"{self.batch_size}, {self.log_every}")
