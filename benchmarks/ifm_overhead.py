"""IFM overhead: MoCo-v2 training step time with ε = 0 vs ε = 0.1, interleaved in one run.

Prints the median step time of each and the ratio IFM / baseline (target ≤ 1.02:
IFM reuses the logits already computed). CPU always; CUDA (AMP) when available.

    python benchmarks/ifm_overhead.py [--steps 30] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from copd_ifm.contrastive import ContrastiveLoss, MoCo
from copd_ifm.contrastive.runtime import autocast, grad_scaler, optimizer_step


def small_resnet() -> tuple[nn.Module, int]:
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def bench(device: torch.device, steps: int, batch: int, size: int) -> tuple[float, float]:
    torch.manual_seed(0)
    encoder, feat = small_resnet()
    model = MoCo(encoder, feat, dim=128, queue_size=4096, momentum=0.99).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    scaler = grad_scaler(device, True)
    losses = {0.0: ContrastiveLoss(0.2, 0.0), 0.1: ContrastiveLoss(0.2, 0.1)}
    x1 = torch.randn(batch, 3, size, size, device=device)
    x2 = torch.randn(batch, 3, size, size, device=device)
    times: dict[float, list[float]] = {0.0: [], 0.1: []}
    for i in range(steps * 2 + 4):
        eps = 0.0 if i % 2 == 0 else 0.1
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device, True):
            out = model((x1,), (x2,))
            loss = losses[eps](out.pos, out.neg)
        optimizer_step(loss, opt, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 4:  # warm-up steps are not timed
            times[eps].append(time.perf_counter() - start)
    return statistics.median(times[0.0]), statistics.median(times[0.1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        steps = args.steps if device.type == "cpu" else args.steps * 10
        batch = args.batch if device.type == "cpu" else 256
        base, ifm = bench(device, steps, batch, args.size)
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"{name}: MoCo-v2 ResNet-18 {args.size}px batch {batch}: baseline {base * 1e3:.1f} ms/step, "
              f"IFM {ifm * 1e3:.1f} ms/step, ratio IFM/baseline = {ifm / base:.3f}")


if __name__ == "__main__":
    main()
