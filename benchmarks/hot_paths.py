"""The hot paths against lightly and against the previous commit, as ratios measured in one run (CPU, one thread).

Rows (ratio = this project's time / the peer's; < 1 is faster):

1. NT-Xent / IFM loss, forward + backward, batch 256 and 1024, dim 128: vs lightly's ``NTXentLoss``
   (ε = 0.1 has no lightly twin: IFM costs against plain NT-Xent) and vs the previous commit's
   boolean-mask ``simclr_similarities`` (copied below).
2. SimCLR view pipeline, 32 px, pairs/s: vs lightly's ``SimCLRTransform`` at the same strengths
   (jitter 0.4/0.4/0.4/0.1, blur p 0.5, σ 0.1–2; lightly blurs with PIL's box-filter approximation)
   and vs the previous pipeline (torchvision's blur on the PIL image, three tensor transforms).
3. CT patch batches at 1 mm, 32³, 128 patches per step: one step read now (memory maps kept) vs the
   previous per-item ``np.load``; loader patches/s over two epochs with 2 and 8 workers, now (one loader,
   persistent workers) vs before (a new loader per epoch, re-opens); beside the patch step's own rate.
4. SimCLR step, ResNet-18 (CIFAR stem), batch 64 at 32 px: vs lightly's loss with its two forwards.

Variants alternate round by round (the machine is shared); each ratio is the median over rounds of the
per-round ratio. lightly is not a dependency: install it where this script runs, e.g.
``pip install --target DIR lightly lightning-utilities --no-deps`` and ``PYTHONPATH=DIR``.

    python benchmarks/hot_paths.py [--rounds 7] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from copd_ifm.context.data import PatchStepDataset, PlanLoader, patch_epoch_plan
from copd_ifm.contrastive import ContrastiveLoss, info_nce_from_similarities, nt_xent
from copd_ifm.contrastive.losses import ifm_objective
from copd_ifm.ct.store import PatchStore
from natural_images.augment import TwoViews, blur_kernel, train_transform
from natural_images.config import AugmentConfig
from natural_images.datasets import CIFAR_MEAN, CIFAR_STD
from scale import fake_store


def previous_simclr_similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous commit's formulation: negatives cut out with a boolean mask rebuilt every call."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    pos = sim[idx, partner]
    keep = torch.ones_like(sim, dtype=torch.bool)
    keep[idx, idx] = False
    keep[idx, partner] = False
    return pos, sim[keep].view(2 * n, 2 * n - 2)


def previous_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    pos, neg = previous_simclr_similarities(z1, z2)
    return info_nce_from_similarities(pos, neg, tau) if eps == 0 else ifm_objective(pos, neg, tau, eps)


def previous_train_transform(aug: AugmentConfig, crop: int) -> v2.Compose:
    """The previous commit's SimCLR view: torchvision's blur on the PIL image."""
    return v2.Compose([
        v2.RandomResizedCrop(crop, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(aug.flip_prob),
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_prob), v2.RandomGrayscale(aug.grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(crop), sigma=tuple(aug.blur_sigma))], p=aug.blur_prob),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(CIFAR_MEAN), list(CIFAR_STD))])


class PreviousPatchStepDataset(Dataset):
    """The previous commit's item: every subject's ``.npy`` re-opened (header parse + mmap) per step."""

    def __init__(self, store: PatchStore, plan: list[Any]) -> None:
        self.store, self.plan = store, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        step = self.plan[i]
        cubes = np.stack([np.load(self.store.path / "patches" / f"{self.store.sids[s]}.npy", mmap_mode="r")
                          [step.landmark] for s in step.subjects])
        return torch.from_numpy(self.store.to_network(cubes))[:, None], step.landmark


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each variant per round, variants alternating within every round (first call untimed)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for key in order:
            times[key].append(timed(variants[key]))
    return times


def ratio(times: dict[str, list[float]], ours: str, peer: str) -> float:
    return statistics.median(a / b for a, b in zip(times[ours], times[peer]))


def lightly_available() -> bool:
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


def cell(times: dict[str, list[float]], ours: str, peer: str) -> str:
    return f"{ratio(times, ours, peer):.2f}" if peer in times else "–"


def loss_rows(rounds: int, batches: tuple[int, ...], with_lightly: bool) -> list[str]:
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        z1 = torch.randn(batch, 128, generator=g, requires_grad=True)
        z2 = torch.randn(batch, 128, generator=g, requires_grad=True)
        assert torch.equal(nt_xent(z1, z2, 0.5, 0.1), previous_nt_xent(z1, z2, 0.5, 0.1))

        def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
            return lambda: fn().backward()

        variants = {
            "ours0": step(lambda: nt_xent(z1, z2, 0.5)), "prev0": step(lambda: previous_nt_xent(z1, z2, 0.5, 0.0)),
            "ours1": step(lambda: nt_xent(z1, z2, 0.5, 0.1)),
            "prev1": step(lambda: previous_nt_xent(z1, z2, 0.5, 0.1))}
        if with_lightly:
            from lightly.loss import NTXentLoss

            lightly_loss = NTXentLoss(temperature=0.5)
            assert torch.allclose(nt_xent(z1, z2, 0.5), lightly_loss(z1, z2), atol=1e-5)      # same values
            variants["lightly"] = step(lambda: lightly_loss(z1, z2))
        times = interleaved(variants, rounds)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        theirs = f"{ms['lightly']:.2f}" if with_lightly else "–"
        rows.append(f"| NT-Xent fwd + bwd, batch {batch}, dim 128, ε 0 | {cell(times, 'ours0', 'lightly')} | "
                    f"{cell(times, 'ours0', 'prev0')} | {ms['ours0']:.2f} / {theirs} / {ms['prev0']:.2f} ms |")
        rows.append(f"| IFM (L + L_ε)/2 fwd + bwd, batch {batch}, ε 0.1 (lightly: plain NT-Xent) | "
                    f"{cell(times, 'ours1', 'lightly')} | {cell(times, 'ours1', 'prev1')} | "
                    f"{ms['ours1']:.2f} / {theirs} / {ms['prev1']:.2f} ms |")
    return rows


def view_rows(rounds: int, n_images: int, with_lightly: bool) -> list[str]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n_images)]
    aug = AugmentConfig()
    ours = TwoViews(train_transform(aug, "simclr", 32, CIFAR_MEAN, CIFAR_STD))
    previous = TwoViews(previous_train_transform(aug, 32))
    pipelines: dict[str, Callable[[Any], Any]] = {"ours": ours, "prev": previous}
    if with_lightly:
        from lightly.transforms import SimCLRTransform

        pipelines["lightly"] = SimCLRTransform(input_size=32, cj_strength=0.5, min_scale=0.08, gaussian_blur=0.5,
                                               sigmas=(0.1, 2.0),
                                               normalize={"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)})
    times = interleaved({name: (lambda t=t: [t(im) for im in images]) for name, t in pipelines.items()}, rounds)
    rate = {k: f"{n_images / statistics.median(v):.0f}" for k, v in times.items()}
    return [f"| SimCLR view pipeline, 32 px, pairs/s | {cell(times, 'ours', 'lightly')} | "
            f"{cell(times, 'ours', 'prev')} | {rate['ours']} / {rate.get('lightly', '–')} / {rate['prev']} "
            f"pairs/s |"]


def patch_rows(rounds: int, subjects: int, steps: int, workers: tuple[int, ...], root: Path) -> list[str]:
    cohort = fake_store(root / "cohort", subjects, spacing_mm=1.0, patch_size=32, landmark_step_mm=104.0)
    store = PatchStore(cohort.store_path)
    batch = min(128, subjects)
    plans = [patch_epoch_plan(subjects, store.n_landmarks, batch, seed=0, epoch=e)[:steps] for e in range(2)]
    now = PatchStepDataset(store)
    times = interleaved({"ours": lambda: now[plans[0][0]],
                         "prev": lambda: PreviousPatchStepDataset(store, plans[0])[0]}, rounds)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rows = [f"| CT patch batch read, {batch} patches of 32³ at 1 mm (one step) | – | "
            f"{ratio(times, 'ours', 'prev'):.2f} | {ms['ours']:.1f} / {ms['prev']:.1f} ms |"]
    for w in workers:
        loader = PlanLoader(PatchStepDataset(store), w)

        def ours_epochs(loader: PlanLoader = loader) -> None:
            for plan in plans:
                for _ in loader(plan):
                    pass

        def previous_epochs(w: int = w) -> None:
            for plan in plans:
                for _ in DataLoader(PreviousPatchStepDataset(store, plan), batch_size=None, num_workers=w,
                                    persistent_workers=False, prefetch_factor=4):
                    pass

        t = interleaved({"ours": ours_epochs, "prev": previous_epochs}, max(3, rounds // 2))
        rate = {k: 2 * steps * batch / statistics.median(v) for k, v in t.items()}
        rows.append(f"| CT loader, {w} workers, 2 epochs × {steps} steps × {batch} patches, patches/s | – | "
                    f"{ratio(t, 'ours', 'prev'):.2f} | {rate['ours']:.0f} / {rate['prev']:.0f} patches/s |")
    rows.append(patch_step_row(store, batch))
    return rows


def patch_step_row(store: PatchStore, batch: int) -> str:
    """The patch step's own rate on this CPU (anchor encoder, forward + backward + optimiser), for scale."""
    from copd_ifm.context.steps import ContextSteps
    from copd_ifm.context.train import build_model, resolve_pretrain_config
    from copd_ifm.contrastive.distributed import DistInfo
    from copd_ifm.contrastive.runtime import grad_scaler, optimizer_step
    from scale import fake_cohort

    cohort = fake_cohort(store.path.parent, len(store.sids), 1.0, 32, 104.0)
    cfg = resolve_pretrain_config("ifm", cohort, overrides=["device=cpu", "workers=0",
                                                            f"schedule.patch_batch={batch}"])
    model = build_model(cfg, store)
    steps = ContextSteps(model, store, cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    phase = steps.phases()[0]
    data = next(iter(phase.plan(0, 0)[0]))
    loss_fn, scaler = ContrastiveLoss.from_config(cfg.loss), grad_scaler(torch.device("cpu"), False)

    def step() -> None:
        out = phase.step(data)
        optimizer_step(loss_fn(out.pos, out.neg), phase.optimizer, scaler)

    seconds = statistics.median(interleaved({"step": step}, 2)["step"])
    return (f"| CT patch step itself (anchor encoder, CPU, batch {batch}), patches/s | – | – | "
            f"{batch / seconds:.0f} |")


def simclr_step_row(rounds: int, batch: int) -> str:
    from lightly.loss import NTXentLoss
    from vision import _setup

    model, optimizer, _ = _setup("simclr", torch.device("cpu"))
    ours_loss, theirs_loss = ContrastiveLoss(0.5, 0.0), NTXentLoss(temperature=0.5)
    x1, x2 = torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)

    def ours() -> None:
        optimizer.zero_grad(set_to_none=True)
        ours_loss(*model(x1, x2)).backward()
        optimizer.step()

    def lightly_two_forwards() -> None:
        optimizer.zero_grad(set_to_none=True)
        theirs_loss(model.head(model.backbone(x1)), model.head(model.backbone(x2))).backward()
        optimizer.step()

    times = interleaved({"ours": ours, "lightly": lightly_two_forwards}, rounds)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return (f"| SimCLR step, ResNet-18, batch {batch} (ours: one forward of both views; lightly: two) | "
            f"{ratio(times, 'ours', 'lightly'):.2f} | – | {ms['ours']:.0f} / {ms['lightly']:.0f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    rows = ["| hot path | vs lightly | vs previous commit | ours / lightly / previous |", "| --- | --- | --- | --- |"]
    with_lightly = lightly_available()
    if not with_lightly:
        print("note: lightly is not installed, so its columns are empty; to fill them: pip install --target DIR "
              "--no-deps lightly lightning-utilities and run with PYTHONPATH=DIR")
    rows += loss_rows(args.rounds, (64,) if quick else (256, 1024), with_lightly)
    rows += view_rows(args.rounds, 50 if quick else 400, with_lightly)
    with tempfile.TemporaryDirectory(prefix="copd-ifm-hot-") as tmp:
        rows += patch_rows(args.rounds, 16 if quick else 128, 2 if quick else 6, (2,) if quick else (2, 8), Path(tmp))
    if with_lightly:
        rows.append(simclr_step_row(max(3, args.rounds // 2), 8 if quick else 64))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
