"""``copd-ifm inspect | synth | preprocess | pretrain | extract | evaluate | visualize-ifm | demo``: the CT stages."""
from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from copd_ifm.cli.args import (add_extend, add_ifm_only, add_set, add_visualize_ifm, cohort_overrides, common, fmt,
                               overrides, run_visualize_ifm, shard, workers)
from copd_ifm.errors import UserError

if TYPE_CHECKING:
    from copd_ifm.cohort.config import CohortConfig

log = logging.getLogger("copd_ifm")


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

    cohort = resolve_cohort(args.cohort, cohort_overrides(args))
    store = preprocess_cohort(cohort, out=Path(args.out) if args.out else None, workers=args.workers,
                              shard=args.shard, lung_seg=args.lung_seg, force=args.force)
    failed = store.failures
    print(f"patch store {store.path}: {len(store.sids)} subjects ok, {len(failed)} failed; "
          f"{store.n_landmarks} landmarks, patches {store.patch_size}^3 at {store.config['spacing_mm']} mm")
    for row in failed.head(10).itertuples():
        print(f"  failed {row.sid}: {row.reason}")
    if len(failed):
        print(f"  all failures: {store.path / 'failures.csv'}")
    return 1 if len(failed) else 0


def _ensure_store(cohort: CohortConfig) -> None:
    """Prepare a missing patch store (the demo cohort on a fresh install: synth + preprocess)."""
    from copd_ifm.ct.preprocess import preprocess_cohort
    from copd_ifm.ct.store import PatchStore

    try:
        PatchStore(cohort.store_path)
    except UserError:
        log.info("no patch store at %s: preprocessing cohort %r first", cohort.store_path, cohort.name)
        preprocess_cohort(cohort)


#: ``pretrain`` flag → dotted PretrainConfig field (unset flags leave the config's value).
_PRETRAIN_FLAGS = {"ifm_eps": "loss.epsilon", "ifm_alpha": "loss.alpha", "ifm_only": "loss.ifm_only",
                   "epochs": "schedule.epochs", "device": "device"}


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from copd_ifm import config as cfg_io
    from copd_ifm.cohort.config import CohortConfig, resolve_cohort
    from copd_ifm.context.config import PretrainConfig
    from copd_ifm.contrastive.rundir import resume_source
    from copd_ifm.context.train import pretrain, read_run_config, resolve_pretrain_config, save_untrained

    cohort_sets, sets = cfg_io.split_prefix(overrides(args, _PRETRAIN_FLAGS), "cohort")
    cohort_fields = {f.name for f in dataclasses.fields(CohortConfig)} - {f.name for f in dataclasses.fields(PretrainConfig)}
    misplaced = [key for key in sets if key.split(".", 1)[0] in cohort_fields]
    if misplaced:
        raise UserError(f"--set {misplaced[0]}=…: {misplaced[0].split('.', 1)[0]} is a cohort field; pretrain "
                        f"takes cohort fields with the prefix cohort. (--set cohort.{misplaced[0]}=…)")
    if args.resume or args.extend:
        source = resume_source(args.out)
        cohort, saved = read_run_config(args.out)
        if cohort_sets:
            raise UserError(f"--resume: the cohort of {args.out} is fixed; drop --set cohort.{next(iter(cohort_sets))}")
        cfg = cfg_io.from_dict(PretrainConfig, cfg_io.apply_overrides(cfg_io.to_dict(saved), sets), str(source))
    else:
        cohort = resolve_cohort(args.cohort, cohort_sets)
        cfg = resolve_pretrain_config(args.config, cohort, sets)
        _ensure_store(cohort)
    if args.untrained:
        if args.resume or args.extend:
            raise UserError("--untrained writes the initial weights and trains nothing: drop --resume / --extend")
        run = save_untrained(cohort, cfg, args.out or f"runs/{cohort.name}-untrained")
        print(f"untrained run folder: {run} (the initial weights of seed {cfg.seed}; extract and evaluate it "
              f"beside the trained runs)")
        return 0
    out = args.out or f"runs/{cohort.name}-{cfg.name}"
    run = pretrain(cohort, cfg, out, resume=args.resume or args.extend, extend=args.extend)
    print(f"run folder: {run}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.evaluation.extract import extract_features, extract_with_encoder

    if args.encoder:
        if not args.cohort:
            raise UserError("--encoder embeds a cohort the encoder may never have seen: give --cohort NAME|YAML|CSV")
        path = extract_with_encoder(args.encoder, resolve_cohort(args.cohort), args.out, store=args.store,
                                    device=args.device, workers=args.workers)
    else:
        if args.store:
            raise UserError("--store goes with --encoder; with --run the cohort's own store is read")
        cohort = resolve_cohort(args.cohort) if args.cohort else None
        path = extract_features(args.run, cohort, args.out, device=args.device)
    print(f"features: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from copd_ifm.cohort.config import resolve_cohort
    from copd_ifm.evaluation.evaluate import default_report_dir, evaluate
    from copd_ifm.evaluation.report import format_table

    cohort = resolve_cohort(args.cohort, cohort_overrides(args))
    out = Path(args.out) if args.out else default_report_dir(cohort)
    sources = [s.strip() for s in args.features.split(",") if s.strip()]
    sensitivity = None if args.sensitivity is None else [s.strip() for s in args.sensitivity.split(",") if s.strip()]
    results = evaluate(cohort, sources, args.outcomes.split(","), folds=args.folds, seed=args.seed, out=out,
                       samples_per_dim=args.samples_per_dim, readout=args.readout, repeats=args.repeats,
                       reference=args.reference, sensitivity=sensitivity)
    print(format_table(results))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_visualize_ifm(args: argparse.Namespace) -> int:
    from copd_ifm.evaluation.neighbours import ct_ifm_neighbours

    return run_visualize_ifm(args, "ct", ct_ifm_neighbours, "subjects")


def cmd_demo(args: argparse.Namespace) -> int:
    from copd_ifm.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print((report / "report.md").read_text(encoding="utf-8"))
    print(f"report: {report / 'report.md'} (also report.html, results.csv, plots)")
    return 0


def _study_extra(args: argparse.Namespace) -> dict:
    """The study fields every CT study's flags set: ``--seeds`` and ``--eps``."""
    from copd_ifm.config import parse_floats

    extra: dict = {}
    if args.seeds is not None:
        extra["seeds"] = args.seeds
    if args.eps is not None:
        extra["epsilons"] = parse_floats(args.eps, "--eps")
    return extra


def cmd_study_shortcut(args: argparse.Namespace) -> int:
    from copd_ifm.config import parse_floats
    from copd_ifm.studies.shortcut.plan import load_study
    from copd_ifm.studies.shortcut.run import run_study

    extra = _study_extra(args)
    if args.tau is not None:
        extra["taus"] = parse_floats(args.tau, "--tau")
    study = load_study(args.scale, args.config, args.overrides, extra)
    out = run_study(study, args.out or f"outputs/studies/shortcut-{args.scale}", shard=args.shard,
                    device=args.device, report_only=args.report_only)
    print(f"shortcut study ({args.scale}): {out / 'summary.md'}, results.csv, shortcut.png, regions.png")
    return 0


def cmd_study_outcomes(args: argparse.Namespace) -> int:
    from copd_ifm.studies.outcomes.plan import load_study
    from copd_ifm.studies.outcomes.run import run_study

    extra = _study_extra(args)
    if args.cohort is not None:
        extra["cohort"] = args.cohort
    study = load_study(args.scale, args.config, args.overrides, extra)
    out = run_study(study, args.out or f"outputs/studies/outcomes-{args.scale}", shard=args.shard,
                    device=args.device, report_only=args.report_only)
    print(f"outcomes study ({args.scale}): {out / 'summary.md'}, table2.csv, comparisons.csv, differences.png")
    return 0


def _study_flags(p: argparse.ArgumentParser, name: str) -> None:
    """The flags every CT study takes."""
    p.add_argument("--config", default=None, help=f"study YAML; unset: configs/studies/{name}-SCALE.yaml")
    p.add_argument("--seeds", type=workers, default=None, help="seeds per setting; unset: the config's")
    p.add_argument("--eps", default=None, help="IFM ε grid, e.g. 0.1,0.5 (the baseline ε = 0 always runs)")
    p.add_argument("--out", default=None, help=f"study folder; unset: outputs/studies/{name}-SCALE")
    p.add_argument("--shard", type=shard, default=(0, 1), metavar="K/N",
                   help="run only every N-th run from the K-th (one process per GPU or core)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished runs")
    add_set(p)
    common(p)


def add_study_parsers(ssub: argparse._SubParsersAction) -> None:
    """``copd-ifm study shortcut`` and ``copd-ifm study outcomes``."""
    p = ssub.add_parser("shortcut", help="CT shortcut study: latent read-out of baseline vs IFM encoders",
                        formatter_class=fmt)
    p.add_argument("--scale", choices=["tiny", "small", "paper"], default="tiny",
                   help="tiny: CI smoke test; small: 2-core CPU, about an hour; paper: GPU, 1 mm, 400+ subjects")
    p.add_argument("--tau", default=None, help="τ sweep, e.g. 0.05,0.2,0.5; unset: the config's")
    _study_flags(p, "shortcut")
    p.set_defaults(func=cmd_study_shortcut)
    p = ssub.add_parser("outcomes", help="outcomes study (the IFM paper's Table 2): does IFM beat the baseline "
                        "on this cohort's outcomes?", formatter_class=fmt)
    p.add_argument("--scale", choices=["tiny", "small", "paper"], default="tiny",
                   help="tiny: CI smoke test; small: synthetic cohort on a 2-core CPU, under an hour; paper: "
                        "COPDGene on GPUs, the anchor's model and schedule")
    p.add_argument("--cohort", default=None,
                   help="'synthetic' (built in the study folder) or a cohort name / YAML with a preprocessed "
                        "store; unset: the config's")
    _study_flags(p, "outcomes")
    p.set_defaults(func=cmd_study_outcomes)


# --- inspect (issue 21): look at a cohort's files before preprocessing them ---
def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from copd_ifm import config as cfg_io
    from copd_ifm.cohort.config import DicomConfig
    from copd_ifm.ct.inspect import inspect_paths, manifest_table

    dicom = cfg_io.from_dict(DicomConfig, cfg_io.apply_overrides({}, args.overrides), "--set")
    rows, entries = inspect_paths(args.paths, dicom)
    if not rows:
        raise UserError(f"no DICOM series or image file under {' '.join(args.paths)}")
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(table.drop(columns=["check"]).convert_dtypes().astype("string").fillna("").to_string(index=False))
    for row in rows:
        print(" ".join(filter(None, (row["path"], row.get("series_uid")))) + f": {row['check']}")
    if args.out:
        out = Path(args.out)
        manifest = manifest_table(entries, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(out, index=False)
        print(f"manifest: {out} ({len(manifest)} rows; add outcome columns, check the note column)")
    return 1 if any(r["check"] != "ok" and not r["check"].startswith("ok ") for r in rows) else 0


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list the DICOM series and image headers under paths; write a manifest",
                       formatter_class=fmt)
    p.add_argument("paths", nargs="+", help="DICOM folders (searched recursively) or image files")
    p.add_argument("--out", default=None, help="write a manifest CSV (sid,image,series_uid,note) here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="DicomConfig fields for the checks, e.g. --set uneven=resample --set kernel_preference=[B3*f]")
    common(p)
    p.set_defaults(func=cmd_inspect)
# --- end inspect ---


def add_ct_parsers(sub: argparse._SubParsersAction) -> None:
    """The CT stages' parsers."""
    add_inspect_parser(sub)
    p = sub.add_parser("synth", help="generate a synthetic COPD CT cohort", formatter_class=fmt)
    p.add_argument("--out", required=True, help="cohort folder to write (images/, masks/, manifest.csv)")
    p.add_argument("--n", type=int, default=48, help="number of subjects")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel spacing in mm")
    p.add_argument("--workers", type=workers, default=2, help="parallel processes")
    common(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("preprocess", help="CT → lung mask → atlas registration → patch store",
                       formatter_class=fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--out", default=None, help="patch store folder (default: the cohort's store)")
    p.add_argument("--workers", type=workers, default=2, help="parallel processes")
    p.add_argument("--shard", type=shard, default=(0, 1), metavar="K/N",
                   help="process only shard K of N (cluster array jobs)")
    p.add_argument("--lung-seg", choices=["auto", "threshold", "lungmask", "totalsegmentator"], default=None,
                   help="lung mask source (default: the cohort's lung_seg)")
    p.add_argument("--force", action="store_true",
                   help="fill a store built from another manifest (changed subjects are processed again)")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("pretrain", help="context-aware MoCo-v2 with IFM on a patch store",
                       formatter_class=fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--config", default="ifm", help="pretrain config: name in configs/pretrain or YAML path")
    p.add_argument("--ifm-eps", type=float, default=None, help="IFM budget ε (0 = baseline); default: config")
    p.add_argument("--ifm-alpha", type=float, default=None, help="IFM weight α; default: config")
    add_ifm_only(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs; default: config")
    p.add_argument("--out", default=None, help="run folder (default: runs/<cohort>-<config>)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last checkpoint with its saved config (differing flags are refused)")
    add_extend(p)
    p.add_argument("--untrained", action="store_true",
                   help="train nothing: write the model's initial weights (same seed) as a run folder, the "
                        "untrained-encoder control for extract and evaluate")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="compute device; unset: config")
    add_set(p, cohort_prefix=True)
    common(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("extract", help="embed every subject of a cohort with a pretrained run or an exported encoder",
                       formatter_class=fmt)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by pretrain")
    source.add_argument("--encoder", help="folder written by `copd-ifm export`: the cohort is preprocessed with its "
                                          "store settings first")
    p.add_argument("--cohort", default=None, help="cohort to embed; unset: the run's cohort (needed with --encoder)")
    p.add_argument("--out", default=None,
                   help="features table; unset: RUN/features.parquet, with --encoder <cohort>-<run>-features.parquet")
    p.add_argument("--store", default=None, help="with --encoder: patch store folder; unset: the cohort's store")
    p.add_argument("--workers", type=workers, default=2, help="with --encoder: preprocessing processes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("evaluate", help="5-fold CV read-out of COPD outcomes from features",
                       formatter_class=fmt)
    p.add_argument("--cohort", default="demo", help="registered cohort name, cohort YAML or manifest CSV")
    p.add_argument("--features", required=True,
                   help="comma-separated run folders or feature tables (.parquet/.csv)")
    p.add_argument("--outcomes", default="logFEV1pp,logFEV1FVC,CLE,Paraseptal,mMRC",
                   help="comma-separated outcomes")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    p.add_argument("--out", default=None, help="report folder (default: reports/<cohort>)")
    p.add_argument("--samples-per-dim", type=workers, default=10,
                   help="capacity rule: nested penalises, pca-rule reduces to, n_train // this many dimensions")
    # issue 22: read-out protocol and paired comparisons
    p.add_argument("--readout", default=None,  # checked by evaluate: importing the read-out here slows every command
                   help="protocol; unset: the cohort YAML's readout, else nested (readout.DEFAULT_READOUT). "
                        "nested: standardised ridge / L2 ordered logit, penalty by inner CV in the training fold "
                        "(for sets with more features than n_train // samples-per-dim); paper: plain OLS / ordered "
                        "logit on all features; pca-rule: PCA to n_train // samples-per-dim, then OLS / ordered logit")
    p.add_argument("--sensitivity", default=None,
                   help="comma-separated protocols also run on the same folds as a sensitivity table "
                        "(default: the other two; '' for none)")
    p.add_argument("--repeats", type=workers, default=1, help="repeated k-fold: repeats r (seed + r), J = r × folds")
    p.add_argument("--reference", default=None,
                   help="method every other is compared with, paired over folds (default: the first feature set)")
    add_set(p)
    common(p)
    p.set_defaults(func=cmd_evaluate)

    add_visualize_ifm(sub, "pretrain", "subjects of the run's store").set_defaults(func=cmd_visualize_ifm)

    p = sub.add_parser("demo", help="the whole chain on the embedded synthetic cohort", formatter_class=fmt)
    p.add_argument("--out", default="outputs/demo", help="folder for runs and the report")
    p.add_argument("--quick", action="store_true", help="a shorter run for a first look")
    common(p)
    p.set_defaults(func=cmd_demo)
