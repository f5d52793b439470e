"""Vision pretraining speed: SimCLR and MoCo-v2, ResNet-18 (CIFAR stem) at 32 px, baseline vs IFM interleaved.

Also times SimCLR training steps of ResNet-18 at width 1 and width 0.25
(``model.width``), interleaved, and prints the speed-up (target ≥ 3× on CPU).

For each method, training steps with ε = 0 and ε = 0.1 alternate on the same
model and batch, so both see the same machine load; prints images/s (a pair of
views counts as one image) and the IFM / baseline ratio of median step times
(target ≤ 1.02: IFM reuses the similarities already computed). Also prints how
many augmented pairs per second one data-loading process produces. CPU always;
CUDA with AMP and channels-last when available (target on an H100: ≥ 10 000
images/s).

    python benchmarks/vision.py [--steps 6] [--batch 16] [--cuda-batch 512] [--cuda-steps 40]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive.optim import build_optimizer
from copd_ifm.contrastive.runtime import autocast, grad_scaler, optimizer_step
from natural_images.augment import TwoViews, train_transform
from natural_images.config import AugmentConfig, VisionConfig
from natural_images.datasets import CIFAR_MEAN, CIFAR_STD
from natural_images.methods import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(method: str, device: torch.device, width: float = 1.0, size: int = 32) -> tuple[torch.nn.Module, Any, Any]:
    """SimCLR/MoCo ResNet-18 (CIFAR stem, ``width`` × channels) on ``device``, its Adam and grad scaler."""
    torch.manual_seed(0)
    config = VisionConfig(method=method)
    config.model.arch = "resnet18"
    config.model.stem = "cifar"
    config.model.width = width
    model = build_model(config, size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model.parameters(), config.optim), grad_scaler(device, device.type == "cuda")


def _interleaved(variants: dict[Any, tuple[torch.nn.Module, Any, Any, ContrastiveLoss]], device: torch.device,
                 batch: int, steps: int, warmup: int = 2, size: int = 32) -> dict[Any, float]:
    """Median training-step time (s) of each variant ``(model, optimizer, scaler, loss)``, steps interleaved."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    x1 = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    x2 = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    times: dict[Any, list[float]] = {key: [] for key in variants}
    for i in range(steps + warmup):
        for key, (model, optimizer, scaler, criterion) in variants.items():
            _sync(device)
            start = time.perf_counter()
            with autocast(device, cuda):
                pos, neg = model(x1, x2)
                loss = criterion(pos, neg)
            optimizer_step(loss, optimizer, scaler)
            _sync(device)
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def bench_method(method: str, device: torch.device, batch: int, steps: int, warmup: int = 2) -> tuple[float, float]:
    """Median step time (s) with ε = 0 and with ε = 0.1, on one model, steps interleaved."""
    model, optimizer, scaler = _setup(method, device)
    times = _interleaved({eps: (model, optimizer, scaler, ContrastiveLoss(0.5, eps)) for eps in (0.0, 0.1)},
                         device, batch, steps, warmup=warmup)
    return times[0.0], times[0.1]


def bench_width(device: torch.device, batch: int, steps: int,
                widths: tuple[float, ...] = (1.0, 0.25)) -> dict[float, float]:
    """Median SimCLR step time (s) of ResNet-18 at each channel width, steps interleaved."""
    return _interleaved({w: (*_setup("simclr", device, w), ContrastiveLoss(0.5, 0.0)) for w in widths},
                        device, batch, steps)


def bench_augment(n: int = 400, size: int = 32) -> float:
    """Augmented pairs per second in one process with one torch thread, as in a DataLoader worker."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    views = TwoViews(train_transform(AugmentConfig(), "simclr", size, CIFAR_MEAN, CIFAR_STD))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for image in images:
        views(image)
    rate = n / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant on CPU")
    ap.add_argument("--batch", type=int, default=16, help="images per step on CPU")
    ap.add_argument("--cuda-steps", type=int, default=40, help="timed steps per variant on CUDA")
    ap.add_argument("--cuda-batch", type=int, default=512, help="images per step on CUDA")
    ap.add_argument("--width-only", action="store_true", help="only the width 1 vs width 0.25 row")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if not args.width_only:
        print(f"augmentation: {bench_augment():.0f} pairs/s per data-loading process (32 px, SimCLR views)")
    runs = [(torch.device("cpu"), args.batch, args.steps)]
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        runs.append((torch.device("cuda"), args.cuda_batch, args.cuda_steps))
    for device, batch, steps in runs:
        name = (f"{torch.cuda.get_device_name()} (AMP, channels-last)" if device.type == "cuda"
                else f"CPU ({torch.get_num_threads()} threads, load average {load:.1f})")
        for method in () if args.width_only else ("simclr", "moco"):
            base, ifm = bench_method(method, device, batch, steps)
            print(f"{name}: {method} ResNet-18 32 px batch {batch}: baseline {batch / base:.1f} images/s "
                  f"({base * 1e3:.1f} ms/step), IFM {batch / ifm:.1f} images/s ({ifm * 1e3:.1f} ms/step), "
                  f"IFM/baseline step time {ifm / base:.3f}")
        times = bench_width(device, batch, steps)
        print(f"{name}: SimCLR ResNet-18 32 px batch {batch}: width 1 {times[1.0] * 1e3:.1f} ms/step, width 0.25 "
              f"{times[0.25] * 1e3:.1f} ms/step, speed-up {times[1.0] / times[0.25]:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
