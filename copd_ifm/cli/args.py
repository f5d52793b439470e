"""Argument plumbing shared by every ``copd-ifm`` subcommand: one-line parse errors, typed values, and the
one override path (flags and ``--set`` items become one ``{"dotted.key": value}`` mapping); also the flags and
the runner of ``visualize-ifm``, which the CT stages and the vision half (``natural_images.cli``) both have."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``copd-ifm STAGE: error: ...`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"need 0 <= K < N, got {text!r}")
    return k, n


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")


def add_set(p: argparse.ArgumentParser, cohort_prefix: bool = False) -> None:
    extra = "; cohort fields take the prefix cohort. (e.g. cohort.manifest=PATH)" if cohort_prefix else ""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any config field (dotted key, YAML value); repeatable{extra}")


def add_ifm_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ifm-only", action="store_true",
                   help="train on L_ε alone instead of (L + α·L_ε)/2 (the paper's Table 2 'L_ε' row)")


def add_extend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extend", action="store_true",
                   help="resume --out and train to --epochs (more than it was started with); the cosine LR "
                        "schedule is recomputed over the new length")


def overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """One dotted-key override mapping: the typed values of the given ``flags`` (flag → config field),
    then the parsed ``--set`` items (which win)."""
    from copd_ifm.config import dotted

    # ``is`` tests: ``0 in (None, False)`` is true, and ``--ifm-eps 0`` or ``--workers 0`` must count as given.
    given = {key: value for flag, key in flags.items()
             if (value := getattr(args, flag, None)) is not None and value is not False}
    return {**given, **dotted(args.overrides)}


def cohort_overrides(args: argparse.Namespace) -> dict:
    """``--set`` for a stage whose config is the cohort: the ``cohort.`` prefix is optional there."""
    from copd_ifm.config import split_prefix

    prefixed, plain = split_prefix(overrides(args, {}), "cohort")
    return {**plain, **prefixed}


#: The IFM-neighbour command of each kind of run folder (``copd_ifm.contrastive.rundir.run_kind``).
VISUALIZE_COMMANDS = {"ct": "copd-ifm visualize-ifm", "vision": "copd-ifm vision visualize-ifm"}


def eps_grid(text: str) -> list[float]:
    """``--eps`` of ``visualize-ifm``: comma-separated budgets >= 0 such as ``0.1,0.2,1.0`` (the floor's parser)."""
    from copd_ifm.config import parse_floats
    from copd_ifm.errors import UserError

    try:
        values = parse_floats(text, "ε grid")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"ε must be >= 0, got {text!r}")
    return values


def add_visualize_ifm(sub: argparse._SubParsersAction, run: str, items: str) -> argparse.ArgumentParser:
    """The ``visualize-ifm`` parser of one kind of run (CT and vision take the same flags); ``run`` names the
    command that writes ``--run``, ``items`` what the bank holds."""
    p = sub.add_parser("visualize-ifm", help=f"nearest {items} to IFM-perturbed keys (paper Fig. 4)",
                       formatter_class=fmt)
    p.add_argument("--run", required=True, help=f"run folder written by '{run}'")
    p.add_argument("--eps", type=eps_grid, default=[0.1, 0.2, 1.0], help="comma-separated ε (0 is always added)")
    p.add_argument("--anchors", type=workers, default=4, help=f"anchors, evenly spaced over the {items}")
    p.add_argument("--seed", type=int, default=0, help="seed of the anchor views and negatives")
    p.add_argument("--out", default=None, help="folder for ifm_neighbours.png/.json; unset: RUN/ifm")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    common(p)
    return p


def run_visualize_ifm(args: argparse.Namespace, kind: str, draw: Callable[..., dict], items: str) -> int:
    """Run a ``visualize-ifm`` command: refuse a run of another kind (naming its command), ``draw`` the grid
    into ``--out`` (unset: ``RUN/ifm``) and print anchors, ε, the bank of ``items`` and the grid's path."""
    from copd_ifm.contrastive.rundir import check_kind

    check_kind(args.run, kind, VISUALIZE_COMMANDS)
    out = Path(args.out) if args.out else Path(args.run) / "ifm"
    result = draw(args.run, args.eps, args.anchors, out, device=args.device, seed=args.seed)
    print(f"IFM neighbours of {len(result['anchor_index'])} anchors at ε = {result['eps']} (bank of "
          f"{result['bank_size']} {items}): {out / 'ifm_neighbours.png'}")
    return 0
