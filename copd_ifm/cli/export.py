"""``copd-ifm export``: a run's query encoder as a shareable folder (CT and vision runs alike)."""
from __future__ import annotations

import argparse
from pathlib import Path

from copd_ifm.cli.args import common, fmt
from copd_ifm.errors import UserError


def run_kind(run_dir: Path) -> str:
    """``ct`` or ``vision``, from the run's saved ``config.yaml``."""
    from copd_ifm.config import read_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no config.yaml; give a folder written by `copd-ifm pretrain` or "
                        f"`copd-ifm vision pretrain`")
    doc = read_yaml(path)
    if "pretrain" in doc and "cohort" in doc:
        return "ct"
    if "method" in doc:
        return "vision"
    raise UserError(f"{path}: neither a CT nor a vision run config; give a folder written by a pretrain command")


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if run_kind(run_dir) == "ct":
        from copd_ifm.context.export import export_run
    else:
        from natural_images.export import export_run
    out = export_run(run_dir, args.out, data_license=args.data_license, fmt=args.format)
    print(f"exported encoder: {out} (load with copd_ifm.load_encoder({str(out)!r}); check with "
          f"`cd {out} && sha256sum -c SHA256SUMS`)")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a run's encoder as safetensors + settings + model card (shareable, no pickle)",
                       formatter_class=fmt)
    p.add_argument("--run", required=True, help="run folder of `copd-ifm pretrain` or `copd-ifm vision pretrain`")
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument("--data-license", default="",
                   help="licence of the training data, as you state it (written to MODEL_CARD.md)")
    p.add_argument("--format", choices=["torchscript", "onnx"], default=None,
                   help="also write the encoder in this format, checked against the eager module "
                        "(onnx needs pip install 'copd-ifm[onnx]')")
    common(p)
    p.set_defaults(func=cmd_export)
