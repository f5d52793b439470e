"""``copd-ifm export``: a run's query encoder as a shareable folder (CT and vision runs alike)."""
from __future__ import annotations

import argparse
from pathlib import Path

from copd_ifm.cli.args import common, fmt


def cmd_export(args: argparse.Namespace) -> int:
    from copd_ifm.contrastive.rundir import run_kind

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
