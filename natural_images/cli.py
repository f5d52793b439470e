"""``copd-ifm vision demo | pretrain | linear | visualize-ifm | robust | make-trifeature | make-digits | study``:
the vision half's commands, registered by the main CLI (:func:`add_vision_parser`).

Built on the CLI's argument plumbing (:mod:`copd_ifm.cli.args`, the one override path); each command imports
its stage when it runs, so ``copd-ifm --help`` and the CT stages do not load torchvision.
"""
from __future__ import annotations

import argparse
import logging

from copd_ifm.cli.args import (Parser, add_extend, add_ifm_only, add_set, add_visualize_ifm, common, fmt, overrides,
                               run_visualize_ifm, shard, workers)

log = logging.getLogger("copd_ifm")


# ``vision pretrain`` flag → dotted VisionConfig field (unset flags leave the config's value).
_VISION_FLAGS = {"dataset": "data.dataset", "method": "method", "arch": "model.arch", "ifm_eps": "loss.epsilon",
                 "ifm_alpha": "loss.alpha", "ifm_only": "loss.ifm_only", "hcl_beta": "loss.hcl_beta", "tau_plus": "loss.tau_plus",
                 "temperature": "loss.temperature", "epochs": "epochs", "batch_size": "batch_size",
                 "lr": "optim.lr", "seed": "seed", "data_root": "data.root", "workers": "data.workers",
                 "download": "data.download",
                 "width": "model.width",
                 "classes": "data.classes"}


def cmd_vision_pretrain(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from copd_ifm.config import named_config
    from copd_ifm.contrastive.rundir import resume_source
    from natural_images.run import default_config_name, default_run_dir, load_vision_config
    from natural_images.train import pretrain

    resume = args.resume or args.extend
    if resume:
        name = str(resume_source(args.out, args.config))
    else:
        name = str(named_config("vision", args.config or default_config_name(args.dataset, args.method)))
    config = load_vision_config(name, overrides=overrides(args, _VISION_FLAGS))
    out = Path(args.out) if args.out else default_run_dir(config)
    summary = pretrain(config, out, resume=resume, device=args.device, extend=args.extend)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        knn = ", ".join(f"{k} {v:.2f}%" for k, v in summary.get("knn_top1", {}).items())
        print(f"run folder: {out} (epochs {summary.get('epochs_done')}/{summary.get('epochs')}, "
              f"loss {summary.get('loss', float('nan')):.4f}{', kNN top-1 ' + knn if knn else ''})")
    return 0


def cmd_vision_linear(args: argparse.Namespace) -> int:
    from natural_images.linear import linear_readout, resolve_linear_config

    linear = resolve_linear_config(args.run, overrides(args, {"epochs": "epochs", "lr": "optim.lr",
                                                               "batch_size": "batch_size"}))
    result = linear_readout(args.run, args.dataset, linear, device=args.device, data_root=args.data_root,
                            download=args.download, workers=args.workers)
    for label, acc in result["top1"].items():
        print(f"{result['dataset']} {label}: linear top-1 {acc:.2f}% "
              f"({result['train_size']} train / {result['test_size']} test images)")
    print(f"read-out: {result['readout']}")
    print(f"results: {args.run}/linear.json, linear.csv, linear.png")
    return 0


def cmd_vision_visualize_ifm(args: argparse.Namespace) -> int:
    from natural_images.visualize import visualize_ifm

    return run_visualize_ifm(args, "vision", visualize_ifm, "training images")


def cmd_vision_robust(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natural_images.robust import robust_features

    out = Path(args.out) if args.out else Path(args.run) / "robust"
    r = robust_features(args.run, args.fgsm_eps, args.max_steps, out, device=args.device, seed=args.seed)
    print(f"clean test top-1: D {r['D']:.2f}%, D_R {r['D_R']:.2f}%, D_NR {r['D_NR']:.2f}% "
          f"({r['flipped']} of {r['train_size']} examples flipped, {r['not_flipped']} never did)")
    print(f"results: {out / 'robust.json'}, robust.csv, robust_examples.csv, robust.png")
    return 0


def cmd_vision_make_trifeature(args: argparse.Namespace) -> int:
    from natural_images.config import DataConfig
    from natural_images.trifeature import TrifeatureSpec, make_trifeature

    spec = TrifeatureSpec(size=args.size, seed=args.seed, per_combination=args.per_combination,
                          test_per_combination=args.test_per_combination, texture_period=args.texture_period)
    out = make_trifeature(args.out or DataConfig().root_path / "trifeature", spec, workers=args.workers)
    log.info("trifeature: %d train + %d test images of %d px in %s (contact sheet: %s)",
             1000 * spec.train_per_combination, 1000 * spec.test_per_combination, spec.size, out,
             out / "contact_sheet.png")
    return 0


def cmd_vision_make_digits(args: argparse.Namespace) -> int:
    from natural_images.config import DataConfig
    from natural_images.digits import DigitsSpec, make_digits

    data_root = args.data_root or (str(DataConfig().root_path) if args.source == "stl" else None)
    spec = DigitsSpec(source=args.source, data_root=data_root, size=args.size, seed=args.seed,
                      n_train=args.n_train, n_test=args.n_test)
    name = "stl-digits" if spec.source == "stl" else "digits-standin"
    out = make_digits(args.out or DataConfig().root_path / name, spec, workers=args.workers)
    log.info("%s written to %s (contact sheet: %s)", name, out, out / "contact_sheet.png")
    return 0


def cmd_vision_recipe(args: argparse.Namespace) -> int:
    from natural_images.studies.recipes import load_recipe
    from natural_images.studies.recipes_run import run_recipe

    extra: dict = {"seeds": args.seeds} if args.seeds else {}
    run: dict = {}
    if args.epochs:
        run["epochs"] = args.epochs
    if args.dataset or args.data_root:
        run["data"] = {k: v for k, v in (("dataset", args.dataset), ("root", args.data_root)) if v}
    if run:
        extra["run"] = run
    study = load_recipe(args.study, args.scale or "tiny", args.config, args.overrides, extra)
    out = run_recipe(study, args.out or f"outputs/studies/{study.study}-{study.scale}", shard=args.shard,
                     device=args.device, report_only=args.report_only)
    print(f"{study.study} study ({study.scale}): {out / 'summary.md'}, results.csv, {study.study}.png")
    return 0


def cmd_vision_study(args: argparse.Namespace) -> int:
    from natural_images.studies import aggregate, load_study_config, run_study
    from natural_images.studies.recipes import KINDS

    if args.study in KINDS:
        return cmd_vision_recipe(args)
    extra: dict = {}
    if args.dataset:
        extra["dataset"] = args.dataset
    if args.seeds:
        extra["seeds"] = args.seeds
    if args.epochs:
        extra.setdefault("run", {})["epochs"] = args.epochs
    if args.data_root:
        extra.setdefault("run", {})["data"] = {"root": args.data_root}
        extra["digits"] = {"raw_root": args.data_root}
    study = load_study_config(args.study, args.scale or "small", args.config, args.overrides, extra)
    out = args.out or f"outputs/studies/{study.study}-{study.dataset}-{study.scale}"
    if args.report_only:
        table = aggregate(study, out)
    else:
        table = run_study(study, out, shard=args.shard, device=args.device, workers=args.workers)
    log.info("%s study: %d finished runs; results, plots and summary.md in %s", study.study, len(table), out)
    return 0


def cmd_vision_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natural_images.studies import load_study_config, run_study

    extra = {"run": {"epochs": args.epochs}} if args.epochs else {}
    study = load_study_config("ifm", "demo", overrides=args.overrides, extra=extra)
    out = Path(args.out)
    run_study(study, out, device=args.device, workers=args.workers)
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(f"vision demo: {out / 'summary.md'} (also results.csv, controls.csv, ifm.png; runs in {out / 'runs'})")
    return 0


def add_vision_demo_parser(vsub: argparse._SubParsersAction) -> None:
    """``copd-ifm vision demo``: the offline quick start (a small ``ifm`` study, ``configs/vision/studies/ifm-demo.yaml``)."""
    p = vsub.add_parser("demo", help="offline quick start: Trifeature, baseline vs IFM, untrained control, report",
                        formatter_class=fmt,
                        description="Generates a 32-px Trifeature set (first use), pretrains SimCLR baseline and IFM "
                                    "(ε = 0.1) with a narrow ResNet-18, reads colour, shape and texture out of them "
                                    "and of the untrained encoder, and writes summary.md. No download. A rerun "
                                    "reuses finished runs.")
    p.add_argument("--out", default="outputs/vision-demo", help="study folder (runs, results, summary.md)")
    p.add_argument("--epochs", type=workers, default=None, help="pretraining epochs per run; unset: the config's (8)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--workers", type=workers, default=2, help="processes generating the dataset if missing")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_vision_demo)


def add_vision_parser(sub: argparse._SubParsersAction) -> None:
    """``copd-ifm vision`` and its commands (``demo | pretrain | linear | visualize-ifm | robust | make-trifeature |
    make-digits | study``) under the main parser's stages ``sub``."""
    p = sub.add_parser("vision", help="SimCLR / MoCo-v2 with IFM on natural images", formatter_class=fmt)
    common(p)
    vsub = p.add_subparsers(dest="vision_cmd", metavar="COMMAND", parser_class=Parser)
    vsub.required = True
    add_vision_demo_parser(vsub)
    p = vsub.add_parser("pretrain", help="SimCLR / MoCo-v2 pretraining with IFM", formatter_class=fmt,
                        description="Unset flags keep the config's value. Runs under torchrun for DDP "
                                    "(--batch-size is the global batch).")
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100, stl10, tinyimagenet, imagenet100, trifeature, digits-standin, "
                        "stl-digits, folder (--data-root DIR with train/ and val/ class folders); unset: cifar10")
    p.add_argument("--method", choices=["simclr", "moco", "adco"], default=None,
                   help="contrastive method (adco: learnable negatives, settings in the adco: section); unset: simclr")
    p.add_argument("--config", default=None,
                   help="name in configs/vision or YAML path; unset: DATASET_METHOD, e.g. cifar10_simclr "
                        "(adco without DATASET_adco: DATASET_moco)")
    p.add_argument("--arch", default=None, help="torchvision ResNet: resnet18, resnet50, ...")
    p.add_argument("--width", type=float, default=None,
                   help="channel multiplier of the ResNet (0.25: 16 base channels, ~1/16 of the compute)")
    p.add_argument("--ifm-eps", type=float, default=None, help="IFM budget ε (0 = baseline)")
    p.add_argument("--ifm-alpha", type=float, default=None, help="IFM weight α in (L + α·L_ε)/2")
    add_ifm_only(p)
    p.add_argument("--hcl-beta", type=float, default=None, help="hard-negative concentration β")
    p.add_argument("--tau-plus", type=float, default=None, help="positive-class prior τ⁺ (debiased negatives)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature τ")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets; unset: the config's (DATA_HOME/vision)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="keep only the class folders listed in FILE, one per line (folder, imagenet100)")
    p.add_argument("--download", action="store_true", help="download a missing dataset (needs internet)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per GPU/process")
    p.add_argument("--out", default=None, help="run folder; unset: runs/vision/DATASET_METHOD_ARCH_epsE_seedS")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_extend(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_vision_pretrain)

    p = vsub.add_parser("linear", help="linear read-out of a pretrained run", formatter_class=fmt,
                        description="Encodes train/test once with the frozen encoder, then trains a linear "
                                    "classifier; --set keys are fields of the run config's linear section.")
    p.add_argument("--run", required=True, help="run folder written by 'vision pretrain'")
    p.add_argument("--dataset", default=None, help="dataset to read out; unset: the pretraining dataset")
    p.add_argument("--epochs", type=int, default=None, help="linear epochs; unset: the run config's")
    p.add_argument("--lr", type=float, default=None, help="learning rate; unset: the run config's")
    p.add_argument("--batch-size", type=int, default=None, help="batch size; unset: the run config's")
    p.add_argument("--data-root", default=None, help="folder holding the datasets; unset: the run's")
    p.add_argument("--download", action="store_true", help="download a missing dataset (needs internet)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes; unset: the run config's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_vision_linear)

    add_visualize_ifm(vsub, "vision pretrain", "training images").set_defaults(func=cmd_vision_visualize_ifm)

    p = vsub.add_parser("robust", help="robust vs non-robust features: probes on D, D_R, D_NR (paper Fig. 8)",
                        formatter_class=fmt)
    p.add_argument("--run", required=True, help="run folder written by 'vision pretrain'")
    p.add_argument("--fgsm-eps", type=float, default=0.01, help="FGSM step in pixel units of [0, 1] images")
    p.add_argument("--max-steps", type=workers, default=20, help="FGSM steps before an example counts as unflipped")
    p.add_argument("--seed", type=int, default=0, help="seed of the random targets t != y")
    p.add_argument("--out", default=None, help="folder for robust.json/.csv/.png; unset: RUN/robust")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    common(p)
    p.set_defaults(func=cmd_vision_robust)

    p = vsub.add_parser("make-trifeature", help="generate the Trifeature dataset", formatter_class=fmt)
    p.add_argument("--out", default=None,
                   help="folder to write (images/, labels.csv, dataset.json, contact_sheet.png); "
                        "default: DATA_HOME/vision/trifeature, where `--dataset trifeature` looks")
    p.add_argument("--size", type=int, default=128, help="image side in px")
    p.add_argument("--per-combination", type=int, default=10,
                   help="images per colour × shape × texture combination (train + test)")
    p.add_argument("--test-per-combination", type=int, default=2, help="of those, images in the test split")
    p.add_argument("--texture-period", type=float, default=None,
                   help="texture period in px (default: 10·size/224, at least 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same pixels)")
    p.add_argument("--workers", type=workers, default=2, help="parallel processes")
    common(p)
    p.set_defaults(func=cmd_vision_make_trifeature)

    p = vsub.add_parser("make-digits", help="build STL-digits (or its offline stand-in)", formatter_class=fmt)
    p.add_argument("--out", default=None,
                   help="folder to write (images/, labels.csv, dataset.json, contact_sheet.png); default: "
                        "DATA_HOME/vision/stl-digits or .../digits-standin, where `--dataset NAME` looks")
    p.add_argument("--source", choices=["stl", "standin"], default="standin",
                   help="stl: STL10 + MNIST files under --data-root; standin: scikit-learn's digits and photos")
    p.add_argument("--data-root", default=None,
                   help="folder holding stl10_binary/ and MNIST/raw/ (--source stl); default: DATA_HOME/vision")
    p.add_argument("--size", type=int, default=96, help="image side in px (composed at 96 px)")
    p.add_argument("--n-train", type=int, default=5000, help="stand-in training items")
    p.add_argument("--n-test", type=int, default=2000, help="stand-in test items")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--workers", type=workers, default=2, help="parallel processes")
    common(p)
    p.set_defaults(func=cmd_vision_make_digits)

    p = vsub.add_parser("study", help="vision studies: feature suppression (difficulty, IFM, correlation), the "
                        "paper's Table 1 grid (table1) and robust features (robust)", formatter_class=fmt)
    p.add_argument("study", choices=["difficulty", "ifm", "correlation", "table1", "robust"],
                   help="difficulty: τ/β sweeps; ifm: IFM vs baseline; correlation: loss vs read-out error; "
                        "table1: MoCo-v2/AdCo × ε, linear top-1; robust: SimCLR vs IFM on D, D_R, D_NR")
    p.add_argument("--scale", choices=["tiny", "small", "paper"], default=None,
                   help="tiny: smoke test (table1, robust); small: 32-px images, CPU minutes (feature "
                        "suppression); paper: the paper's setting; unset: small, or tiny for table1/robust")
    p.add_argument("--config", default=None, help="study YAML; unset: configs/vision/studies/STUDY-SCALE.yaml")
    p.add_argument("--dataset", default=None,
                   help="unset: the config's (trifeature, digits-standin or stl-digits for feature suppression)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting; unset: the config's")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs per run; unset: the config's")
    p.add_argument("--data-root", default=None,
                   help="folder holding (or receiving) the generated dataset and STL10/MNIST; unset: the config's")
    p.add_argument("--out", default=None,
                   help="study folder; unset: outputs/studies/STUDY-DATASET-SCALE (table1, robust: STUDY-SCALE)")
    p.add_argument("--shard", type=shard, default=(0, 1), metavar="K/N",
                   help="run only every N-th run from the K-th (one process per GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--workers", type=workers, default=2, help="processes generating the dataset if missing")
    p.add_argument("--report-only", action="store_true", help="only re-aggregate the finished runs")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_vision_study)
