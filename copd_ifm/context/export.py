"""``copd-ifm export`` of a CT run, and the builder that reads it back.

What is exported is the :class:`~copd_ifm.context.model.SubjectEncoder`: the query patch and graph
encoders (no MoCo heads, queues or key encoders) with the landmark set (normalised atlas coordinates
``[L, 3]`` and the lattice ``[2, E]``). ``encoder.json`` holds what a new cohort must be preprocessed
with (the store settings), the network's input convention and the model settings that rebuild it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from copd_ifm import config as cfg_io
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.config import ModelConfig
from copd_ifm.context.encoders import GraphEncoder
from copd_ifm.context.model import SubjectEncoder, patch_module
from copd_ifm.context.train import load_trained
from copd_ifm.contrastive import export as bundle
from copd_ifm.ct.landmarks import atlas_landmarks
from copd_ifm.ct.patches import HU_MAX, HU_MIN
from copd_ifm.ct.preprocess import store_settings
from copd_ifm.ct.store import PatchStore
from copd_ifm.errors import UserError

KIND = "ct-context"


def export_run(run_dir: str | Path, out: str | Path, data_license: str = "", fmt: str | None = None) -> Path:
    """Write the exported folder of CT run ``run_dir`` to ``out`` (new or empty); ``fmt``: also
    ``torchscript`` or ``onnx``, checked against the eager encoder. Returns ``out``."""
    run_dir = Path(run_dir)
    model, cohort, cfg = load_trained(run_dir, "cpu")
    encoder = model.subject_encoder().eval()
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    settings = store_settings(cohort)
    corners = atlas_landmarks(cohort.spacing_mm, cohort.patch_size, cohort.landmark_step_mm,
                              cohort.landmark_min_lung_fraction)
    if len(corners) != model.n_landmarks:
        raise UserError(f"{run_dir}: the run has {model.n_landmarks} landmarks but its cohort settings give "
                        f"{len(corners)} on this atlas; export with the copd-ifm version that trained it")
    feat = model.graph_encoder.feat_dim
    spec: dict[str, Any] = {
        "kind": KIND,
        "run": {"name": run_dir.name, "config_hash": cfg_io.config_hash(cfg), "epochs": cfg.schedule.epochs,
                "epochs_done": summary.get("epochs_done"), "cohort": cohort.name},
        "model": cfg_io.to_dict(cfg.model),
        "loss": cfg_io.to_dict(cfg.loss),
        "graph": cfg.graph,
        "store": settings,
        "input": {"hu_window": [HU_MIN, HU_MAX], "network_intensity": "(HU + 1024) / 632 - 1",
                  "patch_axes": "z, y, x", "patch_size": cohort.patch_size, "spacing_mm": cohort.spacing_mm,
                  "forward": "patches [L, 1, P, P, P], edge_index [2, E] -> (node embeddings [L, F], "
                             "patch features [L, F])"},
        "landmarks": {"count": model.n_landmarks, "edges": int(model.edge_index.shape[1]),
                      "atlas_corners": corners.tolist(),
                      "graph": "lattice: face neighbours with self loops (tensor edge_index)"
                               if cfg.graph == "lattice" else "each subject's overlap graph (store.subject_graph)"},
        "features": {"graph": feat, "patch": model.patch_encoder.feat_dim,
                     "subject": "mean over landmarks of the node embeddings (graph_f*) and patch features (patch_f*)"},
    }
    out = bundle.prepare_out(out, fmt)
    bundle.write_bundle(out, encoder.state_dict(), spec, _card(spec, summary, cohort.name, _cohort_size(cohort),
                                                                   data_license))
    if fmt:
        example = torch.zeros(model.n_landmarks, 1, *(cohort.patch_size,) * 3).uniform_(-1, 1)
        bundle.write_traced(out, fmt, encoder, (example, encoder.edge_index), ["patches", "edge_index"],
                            ["node_embeddings", "patch_features"])
    return out


def _cohort_size(cohort: CohortConfig) -> int | str:
    """Subjects in the training store, or a note when it is no longer there."""
    try:
        return len(PatchStore(cohort.store_path))
    except UserError:
        return f"unknown (store {cohort.store_path} not found at export)"


def _card(spec: dict[str, Any], summary: dict[str, Any], cohort: str, n_subjects: int | str, data_license: str) -> str:
    last = (summary.get("history") or [{}])[-1]
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("patch_loss", "patch_acc", "graph_loss", "graph_acc") if k in last)
    # A CT run folder records training losses only; read-outs come from `copd-ifm evaluate`.
    results = [f"- training losses at the last epoch: {shown} (no read-out is recorded in a CT run folder; "
               "`copd-ifm evaluate` gives one)"] if shown else []
    store = spec["store"]
    facts = {"data": f"CT cohort {cohort!r}", "cohort size": f"{n_subjects} subjects",
             "epochs": f"{spec['run']['epochs_done']} of {spec['run']['epochs']}",
             "IFM budget (loss.epsilon)": spec["loss"]["epsilon"], "losses": bundle.describe_loss(spec["loss"]),
             "model": f"{spec['model']['encoder']} patch encoder, GCN graph encoder, {spec['features']['graph']}-d",
             "preprocessing": f"{store['spacing_mm']} mm isotropic, {store['patch_size']}³ patches on "
                              f"{spec['landmarks']['count']} atlas landmarks (step {store['landmark_step_mm']} mm), "
                              f"HU clipped to {spec['input']['hu_window']}",
             "run": f"{spec['run']['name']} (config hash {spec['run']['config_hash']})"}
    usage = """```python
import copd_ifm
encoder, spec = copd_ifm.load_encoder("THIS_FOLDER")
nodes, feats = encoder(subject_patches, encoder.edge_index)   # [L, 1, P, P, P] -> [L, F], [L, F]
```
New cohort: `copd-ifm extract --encoder THIS_FOLDER --cohort NEW.yaml` (preprocessed with `spec["store"]`)."""
    return bundle.model_card(
        f"Context-aware lung CT encoder ({spec['run']['name']})", facts, results, usage,
        "Research: subject-level features of chest CT for read-outs of COPD outcomes (spirometry, emphysema "
        "scores, dyspnoea) and for comparing self-supervised objectives. Not for clinical decisions.",
        ["Trained on the cohort named above only; scanners, protocols and populations it did not see may shift "
         "the features.", "Inputs must be preprocessed exactly as in `encoder.json` (`store`): spacing, patch "
         "size, atlas landmarks, HU window; `copd-ifm extract --encoder` refuses a store built otherwise.",
         "Features carry no diagnosis; read-outs need their own validation."],
        data_license, ["self-supervised", "contrastive", "ifm", "ct", "lung", "copd"])


def build_encoder(tensors: dict[str, Tensor], spec: dict[str, Any]) -> SubjectEncoder:
    """The :class:`SubjectEncoder` of an exported CT folder (weights loaded, strict)."""
    m = cfg_io.from_dict(ModelConfig, spec["model"], "encoder.json:model")
    encoder = SubjectEncoder(patch_module(m), GraphEncoder(m.feat_dim), torch.zeros_like(tensors["landmark_coords"]),
                             torch.zeros_like(tensors["edge_index"]))
    encoder.load_state_dict(tensors)
    return encoder
