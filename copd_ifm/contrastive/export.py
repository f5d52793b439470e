"""Exported encoder folders: weights in safetensors, everything else JSON/Markdown, checksummed.

Layout (``FORMAT_VERSION`` 1), hub-ready as is:

* ``encoder.safetensors``: the encoder's tensors (no pickle, no code);
* ``encoder.json``: ``format``, ``format_version``, ``copd_ifm_version``, ``kind`` (which builder reads it),
  the resolved model and preprocessing settings, the run's name and config hash;
* ``MODEL_CARD.md`` (``README.md`` copy for model hubs): data, training, results, intended use, limits;
* optional ``encoder.torchscript.pt`` / ``encoder.onnx``: the same encoder traced, checked against the eager one;
* ``SHA256SUMS``: ``sha256sum -c`` format over every other file.

Domain-free: CT and vision exporters hand :func:`write_bundle` their tensors, spec and card;
:func:`read_bundle` verifies and reads them back.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from copd_ifm import __version__
from copd_ifm.errors import UserError
from copd_ifm.files import atomic_write, atomic_write_text, file_digest

FORMAT = "copd-ifm-encoder"
FORMAT_VERSION = 1
WEIGHTS, SPEC, CARD, HUB_README, SUMS = "encoder.safetensors", "encoder.json", "MODEL_CARD.md", "README.md", "SHA256SUMS"
TRACED = {"torchscript": "encoder.torchscript.pt", "onnx": "encoder.onnx"}
#: Largest |traced − eager| accepted for float32 features.
TRACE_ATOL = 1e-5


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def prepare_out(out: str | Path, fmt: str | None = None) -> Path:
    """The export folder: new or empty (an export is never mixed with older files); an extra ``fmt`` whose
    packages are missing is refused before anything is written."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None] if fmt == "onnx" else []
    if missing:
        raise UserError(f"--format onnx needs {' and '.join(missing)}: pip install 'copd-ifm[onnx]'")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; choose a new folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_bundle(out: Path, tensors: dict[str, Tensor], spec: dict[str, Any], card: str) -> Path:
    """Write weights, spec (with the format header) and card into the prepared ``out``; sums come last."""
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(plain, str(tmp), metadata={"format": FORMAT}))
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "copd_ifm_version": __version__}
    atomic_write_text(out / SPEC, json.dumps({**header, **spec}, indent=2) + "\n")
    atomic_write_text(out / CARD, card)
    atomic_write_text(out / HUB_README, card)
    return write_sums(out)


def write_sums(out: Path) -> Path:
    """``SHA256SUMS`` over every file of ``out`` but itself (rewritten after a traced copy is added)."""
    lines = [f"{sha256(p)}  {p.name}\n" for p in sorted(out.iterdir()) if p.is_file() and p.name != SUMS]
    atomic_write_text(out / SUMS, "".join(lines))
    return out


def read_spec(folder: str | Path) -> dict[str, Any]:
    """``encoder.json`` of an exported folder, its format checked (a newer format is one line naming the fix)."""
    path = Path(folder) / SPEC
    if not path.is_file():
        raise UserError(f"{folder}: no {SPEC}; give a folder written by `copd-ifm export`")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); export the run again") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise UserError(f"{path}: not a copd-ifm encoder (format {spec.get('format') if isinstance(spec, dict) else None!r})")
    version = spec.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path}: format version {version!r} (copd-ifm {spec.get('copd_ifm_version')}) is newer than "
                        f"this copd-ifm reads ({FORMAT_VERSION}); upgrade copd-ifm (pip install -U copd-ifm)")
    return spec


def verify_sums(folder: Path) -> None:
    """Every file listed in ``SHA256SUMS`` is present with its recorded digest."""
    sums = folder / SUMS
    if not sums.is_file():
        raise UserError(f"{folder}: no {SUMS}; the export is incomplete, export the run again")
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if not name:
            raise UserError(f"{sums}: line {line[:60]!r} is not 'SHA256  NAME'; export the encoder again")
        path = folder / name
        if not path.is_file() or sha256(path) != digest:
            raise UserError(f"{path}: {'missing' if not path.is_file() else 'SHA-256 differs from ' + SUMS}; the "
                            f"file was changed or truncated, download or export the encoder again")


def read_bundle(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, spec)`` of an exported folder, checksums verified; safetensors only, no pickle."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = read_spec(folder)
    verify_sums(folder)
    return load_file(str(folder / WEIGHTS)), spec


def _check_close(eager: Sequence[Tensor], traced: Sequence[Tensor], fmt: str) -> float:
    worst = max(float((a - torch.as_tensor(b)).abs().max()) for a, b in zip(eager, traced))
    if worst > TRACE_ATOL:
        raise UserError(f"--format {fmt}: traced encoder differs from the eager one by {worst:.2e} "
                        f"(> {TRACE_ATOL:g}); use the safetensors weights")
    return worst


def write_traced(out: Path, fmt: str, module: nn.Module, inputs: tuple[Tensor, ...], names: Sequence[str],
                 outputs: Sequence[str]) -> float:
    """Save ``module`` (eval mode) as TorchScript or ONNX beside the weights; returns max |traced − eager|.

    Traced on ``inputs``, checked on other values of the same shapes (every float input redrawn), so a
    trace that froze its example's values is caught. ONNX needs the ``onnx`` extra, see :func:`prepare_out`.
    """
    module = module.eval()
    fresh = tuple(torch.randn_like(x).clamp_(-1, 1) if x.is_floating_point() else x for x in inputs)
    with torch.no_grad():
        eager = [module(*x) for x in (inputs, fresh)]
    eager = [e if isinstance(e, tuple) else (e,) for e in eager]
    path = out / TRACED[fmt]
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)  # asked for
            traced = torch.jit.trace(module, inputs, check_trace=False)
            atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))
            loaded = torch.jit.load(str(path))
            got = [loaded(*x) for x in (inputs, fresh)]
        got = [g if isinstance(g, tuple) else (g,) for g in got]
    else:
        import onnxruntime  # present: prepare_out checked

        # The TorchScript-based exporter (torch >= 2.5 defaults to dynamo, which needs onnxscript too).
        legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        atomic_write(path, lambda tmp: torch.onnx.export(module, inputs, str(tmp), input_names=list(names),
                                                         output_names=list(outputs), **legacy))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = [session.run(None, {n: v.numpy() for n, v in zip(names, x)}) for x in (inputs, fresh)]
    worst = max(_check_close(e, g, fmt) for e, g in zip(eager, got))
    write_sums(out)
    return worst


def model_card(title: str, facts: dict[str, Any], results: list[str], usage: str, intended: str, limits: list[str],
               data_license: str, tags: Sequence[str]) -> str:
    """``MODEL_CARD.md`` text: YAML front matter a model hub reads, then the sections a user needs."""
    front = ["---", "library_name: copd-ifm", "tags:", *(f"- {t}" for t in tags), "---", ""]
    lines = [*front, f"# {title}", "", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", "## Results", "", *(results or ["No read-out results were recorded in the run folder."]), ""]
    lines += ["## Use", "", usage.strip(), "", "## Intended use", "", intended, "", "## Limits", ""]
    lines += [f"- {x}" for x in limits]
    lines += ["", "## Training data licence", "", data_license or "Not stated by the exporter (--data-license).", "",
              "## Files", "", f"`{WEIGHTS}` (safetensors), `{SPEC}` (settings), `{SUMS}` (`sha256sum -c {SUMS}`).", ""]
    return "\n".join(lines)


def describe_loss(loss: dict[str, Any]) -> str:
    """One line for a model card from a resolved ``loss:`` section (:class:`~copd_ifm.contrastive.LossConfig`)."""
    base = f"InfoNCE at τ = {loss['temperature']:g}"
    if loss.get("hcl_beta") or loss.get("tau_plus"):
        base = f"hard-negative InfoNCE (β = {loss['hcl_beta']:g}, τ⁺ = {loss['tau_plus']:g}) at τ = {loss['temperature']:g}"
    if not loss["epsilon"]:
        return f"{base}; no IFM (loss.epsilon = 0, the baseline)"
    objective = "L_ε alone" if loss.get("ifm_only") else f"(L + α·L_ε)/2 with α = {loss['alpha']:g}"
    return f"{base} with IFM, loss.epsilon ε = {loss['epsilon']:g}: {objective}"
