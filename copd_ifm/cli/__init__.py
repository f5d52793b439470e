"""``copd-ifm``: the command line. Thin: parse, resolve config, call one function per stage.

Stages talk through files on disk (manifest, patch store, run folder, features
table), so each can be rerun, sharded or replaced alone. The CT stages live in
:mod:`copd_ifm.cli.ct`, the vision commands in the vision half (:mod:`natural_images.cli`, registered
here), ``export`` (CT and vision runs) in :mod:`copd_ifm.cli.export`, the shared argument plumbing in
:mod:`copd_ifm.cli.args`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from copd_ifm.cli.args import Parser, common, fmt
from copd_ifm.cli.ct import add_ct_parsers, add_study_parsers
from copd_ifm.cli.export import add_export_parser
from copd_ifm.errors import ManifestNotFound, UserError
from natural_images.cli import add_vision_parser

STAGES = ("inspect", "synth", "preprocess", "pretrain", "extract", "evaluate", "visualize-ifm", "demo", "vision", "study",
          "export")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="copd-ifm", formatter_class=fmt,
                    description="Implicit feature modification (IFM) for self-supervised lung-CT and "
                                "natural-image encoders. Stages: " + ", ".join(STAGES))
    common(parser)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", parser_class=Parser)
    sub.required = True
    add_ct_parsers(sub)
    add_vision_parser(sub)
    p = sub.add_parser("study", help="studies built on the CT stages (shortcut: IFM vs feature suppression; outcomes: Table 2)",
                       formatter_class=fmt)
    common(p)
    ssub = p.add_subparsers(dest="study_cmd", metavar="STUDY", parser_class=Parser)
    ssub.required = True
    add_study_parsers(ssub)
    add_export_parser(sub)
    return parser


def _reworded(exc: UserError, args: argparse.Namespace) -> str:
    """The error line; a missing manifest the user named with ``--set`` gets a fix that does not repeat it."""
    given = [item for item in getattr(args, "overrides", None) or []
             if item.split("=", 1)[0].strip() in ("manifest", "cohort.manifest")]
    if isinstance(exc, ManifestNotFound) and given:
        return exc.message(f"from --set {given[-1]}: fix that path, or give --cohort /path/to/manifest.csv")
    return str(exc)


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
        print(f"copd-ifm {args.stage}: error: {_reworded(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"copd-ifm {args.stage}: interrupted", file=sys.stderr)
        return 130
