"""AdCo vs MoCo-v2: parameter count and training-step time, steps of the two models interleaved in one run.

Both are built from the project's configs (``build_model``): ResNet-18 (CIFAR stem), dim 128, K = 4096
(MoCo-v2's queue is a buffer, AdCo's bank a parameter). An AdCo step: forward → encoder loss →
encoder backward + step → ``adco_negative_step`` (the engine loop's ``after_step``). Prints the parameter counts,
the median step times and the ratio AdCo / MoCo-v2. CPU always; CUDA (AMP) when available.

    python benchmarks/adco.py [--steps 20] [--batch 32] [--size 32]
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


def bench(device: torch.device, steps: int, batch: int, size: int) -> dict[str, float]:
    torch.manual_seed(0)
    models, optims = {}, {}
    for method in ("moco", "adco"):
        config = cfg.from_dict(VisionConfig, {"method": method, "moco": {"dim": 128, "queue_size": 4096},
                                              "adco": {"n_negatives": 4096}})
        model = build_model(config, size).to(device)
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
            adco_negative_step(model, pos, lr_neg=3.0, tau_neg=0.02)
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
    args = ap.parse_args()
    for method in ("moco", "adco"):
        config = cfg.from_dict(VisionConfig, {"method": method, "moco": {"dim": 128, "queue_size": 4096},
                                              "adco": {"n_negatives": 4096}})
        total, trained = count(build_model(config, args.size))
        print(f"{method}: {total:,} parameters ({trained:,} trained by gradients)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        batch = args.batch if device.type == "cpu" else 256
        t = bench(device, args.steps if device.type == "cpu" else 10 * args.steps, batch, args.size)
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"{name}: ResNet-18 {args.size}px batch {batch}: MoCo-v2 {t['moco'] * 1e3:.1f} ms/step, "
              f"AdCo {t['adco'] * 1e3:.1f} ms/step, ratio AdCo/MoCo-v2 = {t['adco'] / t['moco']:.3f}")


if __name__ == "__main__":
    main()
