"""``copd-ifm``: the command line. Thin: parse, resolve config, call one function per stage.

Stages talk through files on disk (manifest, patch store, run folder, features
table), so each can be rerun, sharded or replaced alone.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from copd_ifm.errors import UserError

if TYPE_CHECKING:
    from copd_ifm.cohort.config import CohortConfig

log = logging.getLogger("copd_ifm")

STAGES = ("synth", "preprocess", "pretrain", "extract", "evaluate", "demo", "vision", "study")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``copd-ifm STAGE: error: ...`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"need 0 <= K < N, got {text!r}")
    return k, n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (dotted key, YAML value); repeatable")


def _not_built(stage: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise UserError(f"stage '{stage}' is not built yet (tracked in issue #{issue}); nothing was run")
    return run


# --- stage handlers ---------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from copd_ifm.cohort.synthetic import generate_cohort

    manifest = generate_cohort(Path(args.out), n=args.n, seed=args.seed, spacing_mm=args.spacing,
                               workers=args.workers)
    print(f"synthetic cohort: {manifest} ({args.n} subjects at {args.spacing} mm; "
          f"preview {manifest.parent / 'preview.png'})")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pathlib import Path

    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.ct.preprocess import preprocess_cohort

    cohort = resolve_cohort(args.cohort, args.overrides)
    store = preprocess_cohort(cohort, out=Path(args.out) if args.out else None, workers=args.workers,
                              shard=args.shard, lung_seg=args.lung_seg)
    failed = store.failures
    print(f"patch store {store.path}: {len(store.sids)} subjects ok, {len(failed)} failed; "
          f"{store.n_landmarks} landmarks, patches {store.patch_size}^3 at {store.config['spacing_mm']} mm")
    for row in failed.head(10).itertuples():
        print(f"  failed {row.sid}: {row.reason}")
    if len(failed):
        print(f"  all failures: {store.path / 'failures.csv'}")
    return 1 if len(failed) else 0


def _ensure_store(cohort: "CohortConfig") -> None:
    """Prepare a missing patch store (the demo cohort on a fresh install: synth + preprocess)."""
    from copd_ifm.ct.preprocess import preprocess_cohort
    from copd_ifm.ct.store import PatchStore

    try:
        PatchStore(cohort.store_path)
    except UserError:
        log.info("no patch store at %s: preprocessing cohort %r first", cohort.store_path, cohort.name)
        preprocess_cohort(cohort)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.context.train import pretrain, resolve_pretrain_config

    cohort = resolve_cohort(args.cohort)
    extra: dict = {"device": args.device}
    if args.ifm_eps is not None:
        extra["ifm"] = {"epsilon": args.ifm_eps}
    if args.ifm_alpha is not None:
        extra.setdefault("ifm", {})["alpha"] = args.ifm_alpha
    if args.epochs is not None:
        extra["schedule"] = {"epochs": args.epochs}
    cfg = resolve_pretrain_config(args.config, cohort, extra, args.overrides)
    _ensure_store(cohort)
    out = args.out or f"runs/{cohort.name}-{cfg.name}"
    run = pretrain(cohort, cfg, out, resume=args.resume)
    print(f"run folder: {run}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.evaluation.extract import extract_features

    cohort = resolve_cohort(args.cohort) if args.cohort else None
    path = extract_features(args.run, cohort, args.out, device=args.device)
    print(f"features: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.evaluation.evaluate import default_report_dir, evaluate
    from copd_ifm.evaluation.report import format_table

    cohort = resolve_cohort(args.cohort, args.overrides)
    out = Path(args.out) if args.out else default_report_dir(cohort)
    sources = [s.strip() for s in args.features.split(",") if s.strip()]
    results = evaluate(cohort, sources, args.outcomes.split(","), folds=args.folds, seed=args.seed, out=out,
                       samples_per_dim=args.samples_per_dim)
    print(format_table(results))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from copd_ifm.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print((report / "report.md").read_text(encoding="utf-8"))
    print(f"report: {report / 'report.md'} (also report.html, results.csv, plots)")
    return 0


# ``vision pretrain`` flag → dotted VisionConfig field (unset flags leave the config's value).
_VISION_FLAGS = {"dataset": "data.dataset", "method": "method", "arch": "model.arch", "ifm_eps": "loss.ifm_eps",
                 "ifm_alpha": "loss.ifm_alpha", "hcl_beta": "loss.hcl_beta", "tau_plus": "loss.tau_plus",
                 "temperature": "loss.temperature", "epochs": "epochs", "batch_size": "batch_size",
                 "lr": "optim.lr", "seed": "seed", "data_root": "data.root", "workers": "data.workers",
                 "download": "data.download"}


def _vision_fields(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``--set``-style ``key=value`` items for the flags that were given, then the user's own ``--set``."""
    import json

    given = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in flags.items()
             if getattr(args, flag, None) not in (None, False)]
    return given + list(args.overrides)


def cmd_vision_pretrain(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from natural_images.config import config_path, load_vision_config
    from natural_images.run import default_run_dir
    from natural_images.train import pretrain

    if args.resume:
        if not args.out or args.config:
            raise UserError("--resume continues --out RUN_DIR with its saved config.yaml: give --out, drop --config")
        name = str(Path(args.out) / "config.yaml")
        if not Path(name).is_file():
            raise UserError(f"--resume: {name} not found; is --out a vision run folder?")
    else:
        name = str(config_path(args.config or f"{args.dataset or 'cifar10'}_{args.method or 'simclr'}"))
    config = load_vision_config(name, overrides=_vision_fields(args, _VISION_FLAGS))
    out = Path(args.out) if args.out else default_run_dir(config)
    summary = pretrain(config, out, resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        knn = ", ".join(f"{k} {v:.2f}%" for k, v in summary.get("knn_top1", {}).items())
        print(f"run folder: {out} (epochs {summary.get('epochs_done')}/{summary.get('epochs')}, "
              f"loss {summary.get('loss', float('nan')):.4f}{', kNN top-1 ' + knn if knn else ''})")
    return 0


def cmd_vision_linear(args: argparse.Namespace) -> int:
    from natural_images.linear import linear_readout, resolve_linear_config

    linear = resolve_linear_config(args.run, _vision_fields(args, {"epochs": "epochs", "lr": "optim.lr",
                                                                   "batch_size": "batch_size"}))
    result = linear_readout(args.run, args.dataset, linear, device=args.device, data_root=args.data_root,
                            download=args.download, workers=args.workers)
    for label, acc in result["top1"].items():
        print(f"{result['dataset']} {label}: linear top-1 {acc:.2f}% "
              f"({result['train_size']} train / {result['test_size']} test images)")
    print(f"results: {args.run}/linear.json, linear.csv, linear.png")
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


def cmd_vision_study(args: argparse.Namespace) -> int:
    from natural_images.studies import aggregate, load_study_config, run_study

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
    study = load_study_config(args.study, args.scale, args.config, args.overrides, extra)
    out = args.out or f"outputs/studies/{study.study}-{study.dataset}-{study.scale}"
    if args.report_only:
        table = aggregate(study, out)
    else:
        table = run_study(study, out, shard=args.shard, device=args.device, workers=args.workers)
    log.info("%s study: %d finished runs; results, plots and summary.md in %s", study.study, len(table), out)
    return 0


def cmd_study_shortcut(args: argparse.Namespace) -> int:
    from copd_ifm.studies.shortcut.plan import load_study, parse_list
    from copd_ifm.studies.shortcut.run import run_study

    extra: dict = {}
    if args.seeds is not None:
        extra["seeds"] = args.seeds
    if args.eps is not None:
        extra["epsilons"] = parse_list(args.eps, "--eps")
    if args.tau is not None:
        extra["taus"] = parse_list(args.tau, "--tau")
    study = load_study(args.scale, args.config, args.overrides, extra)
    out = run_study(study, args.out or f"outputs/studies/shortcut-{args.scale}", shard=args.shard,
                    device=args.device, report_only=args.report_only)
    print(f"shortcut study ({args.scale}): {out / 'summary.md'}, results.csv, shortcut.png, regions.png")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="copd-ifm", formatter_class=_fmt,
                     description="Implicit feature modification (IFM) for self-supervised lung-CT and "
                                 "natural-image encoders. Stages: " + ", ".join(STAGES))
    _common(parser)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("synth", help="generate a synthetic COPD CT cohort", formatter_class=_fmt)
    p.add_argument("--out", required=True, help="cohort folder to write (images/, masks/, manifest.csv)")
    p.add_argument("--n", type=int, default=48, help="number of subjects")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel spacing in mm")
    p.add_argument("--workers", type=_workers, default=2, help="parallel processes")
    _common(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("preprocess", help="CT → lung mask → atlas registration → patch store",
                       formatter_class=_fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--out", default=None, help="patch store folder (default: the cohort's store)")
    p.add_argument("--workers", type=_workers, default=2, help="parallel processes")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="process only shard K of N (cluster array jobs)")
    p.add_argument("--lung-seg", choices=["auto", "threshold", "lungmask"], default=None,
                   help="lung mask source (default: the cohort's lung_seg)")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("pretrain", help="context-aware MoCo-v2 with IFM on a patch store",
                       formatter_class=_fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--config", default="ifm", help="pretrain config: name in configs/pretrain or YAML path")
    p.add_argument("--ifm-eps", type=float, default=None, help="IFM budget ε (0 = baseline); default: config")
    p.add_argument("--ifm-alpha", type=float, default=None, help="IFM weight α; default: config")
    p.add_argument("--epochs", type=int, default=None, help="epochs; default: config")
    p.add_argument("--out", default=None, help="run folder (default: runs/<cohort>-<config>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("extract", help="embed every subject of a patch store with a pretrained run",
                       formatter_class=_fmt)
    p.add_argument("--run", required=True, help="run folder written by pretrain")
    p.add_argument("--cohort", default=None, help="cohort to embed (default: the run's cohort)")
    p.add_argument("--out", default=None, help="features table (default: RUN/features.parquet)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    _common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("evaluate", help="5-fold CV read-out of COPD outcomes from features",
                       formatter_class=_fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--features", required=True,
                   help="comma-separated run folders or feature tables (.parquet/.csv)")
    p.add_argument("--outcomes", default="logFEV1pp,logFEV1FVC,CLE,Paraseptal,mMRC",
                   help="comma-separated outcomes")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    p.add_argument("--out", default=None, help="report folder (default: reports/<cohort>)")
    p.add_argument("--samples-per-dim", type=_workers, default=10,
                   help="PCA keeps n_train // this many components when features exceed it")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole chain on the embedded synthetic cohort", formatter_class=_fmt)
    p.add_argument("--out", default="outputs/demo", help="folder for runs and the report")
    p.add_argument("--quick", action="store_true", help="a shorter run for a first look")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("vision", help="SimCLR / MoCo-v2 with IFM on natural images", formatter_class=_fmt)
    _common(p)
    vsub = p.add_subparsers(dest="vision_cmd", metavar="COMMAND", parser_class=_Parser)
    vsub.required = True
    _add_vision_parsers(vsub)

    p = sub.add_parser("study", help="studies built on the CT stages (shortcut: IFM vs feature suppression)",
                       formatter_class=_fmt)
    _common(p)
    ssub = p.add_subparsers(dest="study_cmd", metavar="STUDY", parser_class=_Parser)
    ssub.required = True
    p = ssub.add_parser("shortcut", help="CT shortcut study: latent read-out of baseline vs IFM encoders",
                        formatter_class=_fmt)
    p.add_argument("--scale", choices=["tiny", "small", "paper"], default="tiny",
                   help="tiny: CI smoke test; small: 2-core CPU, about an hour; paper: GPU, 1 mm, 400+ subjects")
    p.add_argument("--config", default=None, help="study YAML; unset: configs/studies/shortcut-SCALE.yaml")
    p.add_argument("--seeds", type=_workers, default=None, help="seeds per setting; unset: the config's")
    p.add_argument("--eps", default=None, help="IFM ε grid, e.g. 0.1,0.5 (the baseline ε = 0 always runs)")
    p.add_argument("--tau", default=None, help="τ sweep, e.g. 0.05,0.2,0.5; unset: the config's")
    p.add_argument("--out", default=None, help="study folder; unset: outputs/studies/shortcut-SCALE")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="run only every N-th run from the K-th (one process per GPU or core)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished runs")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_study_shortcut)
    return parser


def _add_vision_parsers(vsub: argparse._SubParsersAction) -> None:
    """``copd-ifm vision pretrain | linear | make-trifeature | make-digits | study``."""
    p = vsub.add_parser("pretrain", help="SimCLR / MoCo-v2 pretraining with IFM", formatter_class=_fmt,
                        description="Unset flags keep the config's value. Runs under torchrun for DDP "
                                    "(--batch-size is the global batch).")
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100, stl10, tinyimagenet, imagenet100, trifeature, ...; unset: cifar10")
    p.add_argument("--method", choices=["simclr", "moco"], default=None, help="contrastive method; unset: simclr")
    p.add_argument("--config", default=None,
                   help="name in configs/vision or YAML path; unset: DATASET_METHOD, e.g. cifar10_simclr")
    p.add_argument("--arch", default=None, help="torchvision ResNet: resnet18, resnet50, ...")
    p.add_argument("--ifm-eps", type=float, default=None, help="IFM budget ε (0 = baseline)")
    p.add_argument("--ifm-alpha", type=float, default=None, help="IFM weight α in (L + α·L_ε)/2")
    p.add_argument("--hcl-beta", type=float, default=None, help="hard-negative concentration β")
    p.add_argument("--tau-plus", type=float, default=None, help="positive-class prior τ⁺ (debiased negatives)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature τ")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets; unset: the config's (DATA_HOME/vision)")
    p.add_argument("--download", action="store_true", help="download a missing dataset (needs internet)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per GPU/process")
    p.add_argument("--out", default=None, help="run folder; unset: runs/vision/DATASET_METHOD_ARCH_epsE_seedS")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_vision_pretrain)

    p = vsub.add_parser("linear", help="linear read-out of a pretrained run", formatter_class=_fmt,
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
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_vision_linear)

    p = vsub.add_parser("make-trifeature", help="generate the Trifeature dataset", formatter_class=_fmt)
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
    p.add_argument("--workers", type=_workers, default=2, help="parallel processes")
    _common(p)
    p.set_defaults(func=cmd_vision_make_trifeature)

    p = vsub.add_parser("make-digits", help="build STL-digits (or its offline stand-in)", formatter_class=_fmt)
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
    p.add_argument("--workers", type=_workers, default=2, help="parallel processes")
    _common(p)
    p.set_defaults(func=cmd_vision_make_digits)

    p = vsub.add_parser("study", help="feature-suppression studies (difficulty, IFM, correlation)",
                        formatter_class=_fmt)
    p.add_argument("study", choices=["difficulty", "ifm", "correlation"],
                   help="difficulty: τ/β sweeps; ifm: IFM vs baseline; correlation: loss vs read-out error")
    p.add_argument("--scale", choices=["small", "paper"], default="small",
                   help="small: 32-px images, CPU minutes; paper: 128-px Trifeature, ResNet-18, 200 epochs")
    p.add_argument("--config", default=None, help="study YAML; unset: configs/vision/studies/STUDY-SCALE.yaml")
    p.add_argument("--dataset", choices=["trifeature", "digits-standin", "stl-digits"], default=None,
                   help="unset: the config's (trifeature)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting; unset: the config's")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs per run; unset: the config's")
    p.add_argument("--data-root", default=None,
                   help="folder holding (or receiving) the generated dataset and STL10/MNIST; unset: the config's")
    p.add_argument("--out", default=None, help="study folder; unset: outputs/studies/STUDY-DATASET-SCALE")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="run only every N-th run from the K-th (one process per GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--workers", type=_workers, default=2, help="processes generating the dataset if missing")
    p.add_argument("--report-only", action="store_true", help="only re-aggregate the finished runs")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_vision_study)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"copd-ifm {args.stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"copd-ifm {args.stage}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
