"""``copd-ifm export`` of a vision run, and the builder that reads it back.

The exported tensors are the backbone's ``state_dict`` with torchvision's own key names (``conv1.weight``,
``layer1.0.bn1.running_mean``, …; no ``fc``, the classifier is replaced by the identity). At width 1 a plain
``torchvision.models.<arch>`` loads them strictly once its ``fc`` is ``nn.Identity()`` and, for the CIFAR
stem, ``conv1`` is ``Conv2d(3, 64, 3, 1, 1, bias=False)`` and ``maxpool`` is ``nn.Identity()``
(``encoder.json``: ``torchvision``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from copd_ifm import config as cfg_io
from copd_ifm.contrastive import export as bundle
from copd_ifm.errors import UserError
from natural_images.backbones import build_backbone, resolve_stem
from natural_images.datasets import dataset_spec, image_sizes
from natural_images.run import load_model, read_summary

KIND = "vision"
CIFAR_STEM = "conv1 = Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); maxpool = Identity()"


def export_run(run_dir: str | Path, out: str | Path, data_license: str = "", fmt: str | None = None) -> Path:
    """Write the exported folder of vision run ``run_dir`` to ``out`` (new or empty); ``fmt``: also
    ``torchscript`` or ``onnx``, checked against the eager backbone. Returns ``out``."""
    run_dir = Path(run_dir)
    model, config = load_model(run_dir, "cpu")
    backbone = model.encoder.eval()
    crop, size = image_sizes(config.data)
    data = dataset_spec(config.data.dataset)
    stem = resolve_stem(config.model.stem, crop)
    with torch.no_grad():
        feat_dim = int(backbone(torch.zeros(1, 3, size, size)).shape[1])
    summary = read_summary(run_dir)
    spec: dict[str, Any] = {
        "kind": KIND,
        "run": {"name": run_dir.name, "config_hash": cfg_io.config_hash(config), "epochs": config.epochs,
                "epochs_done": summary.get("epochs_done"), "dataset": config.data.dataset, "method": config.method},
        "model": {"arch": config.model.arch, "stem": stem, "width": config.model.width, "feat_dim": feat_dim},
        "loss": cfg_io.to_dict(config.loss),
        "input": {"image_size": size, "resize_short_side": round(size * data.eval_resize), "center_crop": size,
                  "channels": "RGB", "scale": "[0, 1] (ToDtype(float32, scale=True))", "mean": list(data.mean),
                  "std": list(data.std), "forward": "images [B, 3, H, W] -> features [B, F]"},
        "torchvision": {"compatible": config.model.width == 1.0, "factory": f"torchvision.models.{config.model.arch}",
                        "changes": (["fc = Identity()"] + ([CIFAR_STEM] if stem == "cifar" else []))},
    }
    out = bundle.prepare_out(out, fmt)
    bundle.write_bundle(out, backbone.state_dict(), spec, _card(spec, summary, config.data.limit, data_license))
    if fmt:
        example = torch.randn(2, 3, size, size)
        bundle.write_traced(out, fmt, backbone, (example,), ["images"], ["features"])
    return out


def _card(spec: dict[str, Any], summary: dict[str, Any], limit: int, data_license: str) -> str:
    results = [f"- kNN top-1 ({kind}) after the last monitored epoch: {acc:.2f} %"
               for kind, acc in (summary.get("knn_top1") or {}).items()]
    results += [f"- linear read-out top-1 ({name}): {acc}" for name, acc in (summary.get("linear") or {}).items()]
    run, model, inp = spec["run"], spec["model"], spec["input"]
    facts = {"data": f"{run['dataset']} (pretraining split)",
             "dataset size": f"at most {limit} images (data.limit)" if limit else "the whole pretraining split",
             "method": run["method"], "epochs": f"{run['epochs_done']} of {run['epochs']}",
             "IFM budget (loss.epsilon)": spec["loss"]["epsilon"], "losses": bundle.describe_loss(spec["loss"]),
             "model": f"{model['arch']} (width {model['width']:g}, {model['stem']} stem), {model['feat_dim']}-d",
             "preprocessing": f"RGB, short side to {inp['resize_short_side']} px, centre crop {inp['center_crop']}, "
                              f"scaled to [0, 1], normalised with mean {inp['mean']}, std {inp['std']}",
             "run": f"{run['name']} (config hash {run['config_hash']})"}
    usage = """```python
import copd_ifm
backbone, spec = copd_ifm.load_encoder("THIS_FOLDER")
features = backbone(images)            # [B, 3, H, W] normalised as spec["input"] -> [B, F]
```
torchvision: `net = torchvision.models.ARCH(); net.fc = torch.nn.Identity()` plus the changes in
`spec["torchvision"]`, then `net.load_state_dict(safetensors.torch.load_file("encoder.safetensors"))`."""
    return bundle.model_card(
        f"Self-supervised {model['arch']} encoder ({run['name']})", facts, results, usage,
        "Research: frozen features for linear or kNN read-outs and for comparing contrastive objectives (IFM).",
        ["Trained on the dataset named above only; its image size and statistics are what the features expect.",
         "kNN / linear numbers above are the run's own monitors, not a benchmark on other data."],
        data_license, ["self-supervised", "contrastive", "ifm", "image-feature-extraction", model["arch"]])


def build_encoder(tensors: dict[str, Tensor], spec: dict[str, Any]) -> nn.Module:
    """The backbone of an exported vision folder (weights loaded, strict)."""
    model = spec["model"]
    backbone, feat_dim = build_backbone(model["arch"], model["stem"], model["width"])
    if feat_dim != model["feat_dim"]:
        raise UserError(f"encoder.json: {model['arch']} at width {model['width']} has {feat_dim} features, the "
                        f"folder says {model['feat_dim']}; export the run again")
    backbone.load_state_dict(tensors)
    return backbone
