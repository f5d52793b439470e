"""Robust vs non-robust features (paper Sec. 4.3, Fig. 8), after Ilyas et al. (2019).

1. ``f``: the run's frozen backbone (eval mode, BatchNorm running statistics,
   float32). ``h``: a linear probe on ``f(x)`` of the training split under the
   evaluation transform (no augmentation), trained by
   :func:`natural_images.linear.fit_linear` with the run's ``linear`` settings.
2. For every training example ``(x, y)``: a target ``t ≠ y`` uniform at random
   (seeded), then repeated FGSM steps towards it::

       x ← clip(x − ε·sign(∇ₓ CE(h(f(x)), t)))   until argmax h(f(x)) = t, at most max_steps steps

   ``ε`` is in pixel units of images in [0, 1]: in the normalised input space
   the step of channel ``c`` is ``ε / std_c`` and the clip range is
   ``[(0 − mean_c)/std_c, (1 − mean_c)/std_c]``. An example already predicted as
   ``t`` takes zero steps.
3. ``D = {(x, y)}`` (every training example), ``D_R = {(x_adv, y)}`` and
   ``D_NR = {(x_adv, t)}`` over the examples that flipped; those that never flip
   within ``max_steps`` are counted and left out of ``D_R`` and ``D_NR``.
4. As in the paper's Sec. 4.3, no encoder is retrained: on each dataset a fresh
   linear classifier is trained on the *same frozen* ``f`` (features of that
   dataset's images, same settings and seed as ``h``) and its clean test
   top-1 (%) is reported.

Labels: the first label column of the dataset (Trifeature: its first feature).
Outputs in ``DIR`` (default ``RUN/robust``): ``robust.json`` (keys ``D``,
``D_R``, ``D_NR`` in %, plus counts and settings), ``robust.csv`` (one row per
dataset), ``robust_examples.csv`` (per training example: label, target,
flipped, FGSM steps), ``robust.png`` (bars).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from copd_ifm import files
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.runtime import loader_workers
from copd_ifm.errors import UserError
from natural_images.augment import eval_transform
from natural_images.datasets import build_dataset, dataset_spec, image_sizes, label_names
from natural_images.features import extract_features
from natural_images.linear import fit_linear
from natural_images.run import load_encoder


def fgsm_to_target(encoder: nn.Module, probe: nn.Module, x: Tensor, target: Tensor, step: Tensor, low: Tensor,
                   high: Tensor, max_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Repeated targeted FGSM on images ``x`` ``[B, 3, H, W]`` (normalised) towards ``target`` ``[B]``.

    ``step``, ``low``, ``high``: per-channel ``[3]`` step size and clip range in
    the normalised space. Each example stops as soon as ``probe(encoder(x))``
    predicts its target. Returns ``x_adv`` ``[B, 3, H, W]``, ``flipped`` ``[B]``
    bool and ``steps`` ``[B]`` (FGSM steps taken; ``max_steps`` for unflipped).
    Both modules must be in eval mode (per-example outputs independent of the batch).
    """
    step, low, high = (v.to(x)[:, None, None] for v in (step, low, high))
    x_adv = x.detach().clone()
    flipped = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    steps = torch.full((len(x),), max_steps, dtype=torch.long, device=x.device)
    with torch.enable_grad():
        for n in range(max_steps + 1):
            idx = (~flipped).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xa = x_adv[idx].requires_grad_(True)
            logits = probe(encoder(xa))
            hit = logits.argmax(1) == target[idx]
            flipped[idx[hit]] = True
            steps[idx[hit]] = n
            if n == max_steps:
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target[idx], reduction="sum"), xa)
            moved = torch.minimum(torch.maximum(xa.detach() - step * grad.sign(), low), high)
            x_adv[idx[~hit]] = moved[~hit]
    return x_adv, flipped, steps


def random_targets(labels: Tensor, num_classes: int, seed: int) -> Tensor:
    """A target ``t ≠ y`` uniform over the other ``num_classes − 1`` classes for each label ``[N]``."""
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(labels),), generator=gen).to(labels.device)
    return (labels + shift) % num_classes


def robust_features(run_dir: str | Path, fgsm_eps: float = 0.01, max_steps: int = 20, out: str | Path | None = None,
                    device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """The Sec. 4.3 experiment on a vision run (see module doc); returns the ``robust.json`` content."""
    if fgsm_eps <= 0 or max_steps < 1:
        raise UserError(f"--fgsm-eps must be > 0 and --max-steps >= 1, got {fgsm_eps} and {max_steps}")
    with D.session(device) as info:
        return _robust(Path(run_dir), fgsm_eps, max_steps, Path(out) if out else Path(run_dir) / "robust",
                       info.device, seed)


def _robust(run_dir: Path, fgsm_eps: float, max_steps: int, folder: Path, dev: torch.device,
            seed: int) -> dict[str, Any]:
    encoder, run_cfg = load_encoder(run_dir, dev)
    lin, data = run_cfg.linear, dataclasses.replace(run_cfg.data, download=False)
    spec = dataset_spec(data.dataset)
    transform = eval_transform(image_sizes(data)[1], spec.eval_resize, spec.mean, spec.std)
    train_set, test_set = build_dataset(data, "train", transform), build_dataset(data, "test", transform)
    label = label_names(train_set)[0]
    extract = dict(batch_size=lin.batch_size, workers=data.workers, device=dev)
    train_x, train_y = extract_features(encoder, train_set, desc="train features", **extract)
    test_x, test_y = extract_features(encoder, test_set, desc="test features", **extract)
    train_y, test_y = train_y[:, 0], test_y[:, 0]
    keep, test_keep = train_y >= 0, test_y >= 0
    num_classes = int(max(train_y[keep].max(), test_y[test_keep].max())) + 1
    if num_classes < 2:
        raise UserError(f"{run_dir}: {data.dataset} has one class in column {label!r}; targets t ≠ y need two")
    probe, _ = fit_linear(train_x[keep], train_y[keep], num_classes, lin, seed=run_cfg.seed, desc="probe h")
    probe.eval()
    targets = random_targets(train_y, num_classes, seed)
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    adv_x, flipped, steps = _attack(encoder, probe, train_set, targets, fgsm_eps / std, -mean / std,
                                    (1 - mean) / std, max_steps, lin.batch_size, data.workers, dev)
    flipped &= keep
    sets = {"D": (train_x[keep], train_y[keep], "y"), "D_R": (adv_x[flipped], train_y[flipped], "y"),
            "D_NR": (adv_x[flipped], targets[flipped], "t")}
    if not bool(flipped.any()):
        raise UserError(f"{run_dir}: no training example reached its target within --max-steps {max_steps} at "
                        f"--fgsm-eps {fgsm_eps}; raise either")
    rows = []
    for name, (x, y, source) in sets.items():
        _, history = fit_linear(x, y, num_classes, lin, seed=run_cfg.seed, test_x=test_x[test_keep],
                                test_y=test_y[test_keep], desc=f"linear {name}")
        rows.append({"dataset": name, "examples": len(x), "labels": source, "test_top1": history[-1]["test_top1"]})
    n_flipped = int(flipped.sum())
    result = {**{r["dataset"]: r["test_top1"] for r in rows}, "run": str(run_dir), "dataset": data.dataset,
              "label": label, "train_size": int(keep.sum()), "test_size": int(test_keep.sum()),
              "flipped": n_flipped, "not_flipped": int(keep.sum()) - n_flipped,
              "mean_steps_flipped": float(steps[flipped].float().mean()), "fgsm_eps": fgsm_eps,
              "max_steps": max_steps, "seed": seed,
              "eps_units": "pixels of [0, 1] images (normalised step ε/std per channel, clipped to the image range)"}
    examples = pd.DataFrame({"index": range(len(train_y)), "label": train_y.tolist(), "target": targets.tolist(),
                             "flipped": flipped.tolist(), "steps": steps.tolist()})
    files.atomic_write_text(folder / "robust.json", json.dumps(result, indent=2) + "\n")
    files.atomic_write_text(folder / "robust.csv", pd.DataFrame(rows).to_csv(index=False))
    files.atomic_write_text(folder / "robust_examples.csv", examples.to_csv(index=False))
    plot_robust(rows, result, folder / "robust.png")
    return result


def _attack(encoder: nn.Module, probe: nn.Module, dataset: Any, targets: Tensor, step: Tensor, low: Tensor,
            high: Tensor, max_steps: int, batch_size: int, workers: int,
            device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fgsm_to_target` over ``dataset`` in order; returns ``f(x_adv)`` ``[N, F]``, flipped ``[N]``, steps ``[N]``."""
    feats, flipped, steps = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(workers))
    start = 0
    for images, _ in tqdm(loader, desc="FGSM", leave=False, disable=not D.is_main()):
        images = images.to(device)
        batch_targets = targets[start:start + len(images)]
        start += len(images)
        x_adv, hit, n = fgsm_to_target(encoder, probe, images, batch_targets, step, low, high, max_steps)
        with torch.no_grad():
            feats.append(encoder(x_adv).float())
        flipped.append(hit)
        steps.append(n)
    return torch.cat(feats), torch.cat(flipped), torch.cat(steps)


def plot_robust(rows: list[dict[str, Any]], result: dict[str, Any], path: Path) -> None:
    """Clean test top-1 (%) of the probes trained on D, D_R and D_NR, with their sizes."""
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.subplots()
    names = [r["dataset"] for r in rows]
    bars = ax.bar(names, [r["test_top1"] for r in rows], color=["0.5", "tab:blue", "tab:orange"])
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['test_top1']:.1f}%\nn = {r['examples']}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 115)
    ax.set(ylabel="clean test top-1 (%)",
           title=f"{result['dataset']}: probes on D, D_R, D_NR (FGSM ε = {result['fgsm_eps']:g}; "
                 f"{result['not_flipped']} never flipped)")
    ax.title.set_fontsize(8)
    ax.grid(axis="y", alpha=0.3)
    files.save_figure(fig, path, dpi=120)
