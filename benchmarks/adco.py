"""AdCo vs MoCo-v2: parameter count and training-step time, steps of the two models interleaved in one run.

Both are built from the project's configs (``build_model``): ResNet-18 (CIFAR stem), dim 128, K = ``--bank``
for MoCo-v2's queue (a buffer) and AdCo's bank (a parameter). An AdCo step as the official code runs it:
forward (queries against the other gathered batch keys and the bank) → encoder loss → encoder backward + step →
``adco_negative_step`` (the engine loop's ``after_step``: bank gradient with the in-batch keys, SGD momentum 0.9,
weight decay 1e-4). Prints the parameter counts, the median step times and the ratio AdCo / MoCo-v2.
CPU always; CUDA (AMP) when available.

    python benchmarks/adco.py [--steps 20] [--batch 32] [--size 32] [--bank 4096]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from copd_ifm import config as cfg
from copd_ifm.contrastive import ContrastiveLoss
from natural_images.config import VisionConfig
from natural_images.methods import AdCo, adco_negative_step, build_model


def count(model: torch.nn.Module) -> tuple[int, int]:
    """All parameters (the momentum key encoder included) and those the optimisers train."""
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


def _config(method: str, bank: int) -> VisionConfig:
    return cfg.from_dict(VisionConfig, {"method": method, "moco": {"dim": 128, "queue_size": bank},
                                        "adco": {"n_negatives": bank}})


def bench(device: torch.device, steps: int, batch: int, size: int, bank: int) -> dict[str, float]:
    torch.manual_seed(0)
    models, optims = {}, {}
    adco = _config("adco", bank).adco  # the official bank settings (SGD lr 3, momentum 0.9, wd 1e-4, tau 0.02)
    for method in ("moco", "adco"):
        model = build_model(_config(method, bank), size).to(device)
        trained = [p for p in model.parameters() if p.requires_grad]  # AdCo's bank is not among them
        models[method], optims[method] = model, torch.optim.SGD(trained, lr=0.03, momentum=0.9)
    cuda = device.type == "cuda"  # float16 autocast and loss scaling on CUDA only, as the training loop does
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    criterion = ContrastiveLoss(0.2)
    x1, x2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    times: dict[str, list[float]] = {"moco": [], "adco": []}
    for i in range(2 * steps + 4):
        method = "moco" if i % 2 == 0 else "adco"
        model = models[method]
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            pos, neg = model(x1, x2)
            loss = criterion(pos, neg)
        optims[method].zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optims[method])
        scaler.update()
        if isinstance(model, AdCo):  # the engine loop's after_step
            adco_negative_step(model, pos, neg, adco.lr_neg, adco.tau_neg, adco.momentum, adco.weight_decay)
        if cuda:
            torch.cuda.synchronize()
        if i >= 4:  # warm-up steps are not timed
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bank", type=int, default=4096, help="MoCo-v2 queue and AdCo bank size K")
    args = ap.parse_args()
    for method in ("moco", "adco"):
        total, trained = count(build_model(_config(method, args.bank), args.size))
        print(f"{method}: {total:,} parameters ({trained:,} trained by gradients)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        batch = args.batch if device.type == "cpu" else 256
        t = bench(device, args.steps if device.type == "cpu" else 10 * args.steps, batch, args.size, args.bank)
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"{name}: ResNet-18 {args.size}px batch {batch} K {args.bank}: MoCo-v2 {t['moco'] * 1e3:.1f} ms/step, "
              f"AdCo {t['adco'] * 1e3:.1f} ms/step, ratio AdCo/MoCo-v2 = {t['adco'] / t['moco']:.3f}")


if __name__ == "__main__":
    main()
