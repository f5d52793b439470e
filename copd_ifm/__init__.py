"""copd-ifm: implicit feature modification for self-supervised lung-CT and natural-image encoders."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from os import PathLike

    import torch

# MONAI and torch-geometric script functions at import time; torch >= 2.9 warns about it in
# every process (also each data-loading worker). It is not ours to fix and says nothing to users.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

#: ``encoder.json`` ``kind`` → the module whose ``build_encoder(tensors, spec)`` rebuilds that encoder.
_BUILDERS = {"ct-context": "copd_ifm.context.export", "vision": "natural_images.export"}


def load_encoder(folder: str | PathLike[str], device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """An encoder exported by ``copd-ifm export`` → ``(module in eval mode, spec)``; no pickle is read.

    ``spec`` is ``encoder.json``: the preprocessing the inputs need and the model settings. Weights come
    from ``encoder.safetensors`` after every file's SHA-256 is checked against ``SHA256SUMS``.
    """
    import importlib

    from copd_ifm.contrastive.export import read_bundle
    from copd_ifm.errors import UserError

    tensors, spec = read_bundle(folder)
    kind = spec.get("kind")
    if kind not in _BUILDERS:
        raise UserError(f"{folder}: encoder kind {kind!r} is unknown to copd-ifm {__version__} "
                        f"(knows {', '.join(_BUILDERS)}); upgrade copd-ifm")
    try:
        module = importlib.import_module(_BUILDERS[kind]).build_encoder(tensors, spec)
    except (KeyError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{folder}: encoder.safetensors does not fit the model in encoder.json ({reason}); the "
                        f"folder was edited or mixed, export the run again") from None
    return module.to(device).eval(), spec
