"""``copd-ifm extract``: subject features from a pretrained context-aware run or an exported encoder.

For every subject of a patch store, with the query encoders in eval mode and
no augmentation:

* ``patch_f*``: the mean over landmarks of the patch encoder's features ``[L, F] → [F]``;
* ``graph_f*``: the mean over landmarks of the GCN node embeddings (the
  anchor's subject feature: node embeddings, not the pooled projection), on the
  run's context graph (the lattice, or with ``graph: subject`` each subject's own).

Optionally the per-landmark node embeddings themselves (``nodes_out``): a
float16 ``.npy`` of shape ``[n_subjects, L, F]`` in the table's subject order,
for regional read-outs.

With an exported encoder (``--encoder DIR``) the cohort is first preprocessed with the encoder's store
settings (spacing, patch size, landmarks, lung mask, registration), so a cohort it never saw gets
features the same way as its training cohort; a store built with other settings is refused.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from copd_ifm import config as cfg_io
from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.data import SubjectDataset, loader
from copd_ifm.context.model import SubjectEncoder
from copd_ifm.context.train import load_trained, open_store
from copd_ifm.contrastive.distributed import session
from copd_ifm.contrastive.rundir import EPSILON_KEY
from copd_ifm.ct.preprocess import store_settings
from copd_ifm.ct.store import PatchStore
from copd_ifm.errors import UserError
from copd_ifm.evaluation.features import FEATURES_FILE, write_features

log = logging.getLogger(__name__)


def extract_features(run_dir: str | Path, cohort: CohortConfig | None = None, out: str | Path | None = None,
                     device: str = "auto", workers: int = 2, nodes_out: str | Path | None = None) -> Path:
    """Embed every subject of ``cohort`` (default: the run's) → features table; returns its path.

    ``nodes_out``: also save the node embeddings ``[n_subjects, L, F]`` (float16 ``.npy``) there.
    """
    run_dir = Path(run_dir)
    with session(device) as info:
        model, run_cohort, cfg = load_trained(run_dir, info.device)
        cohort = cohort or run_cohort
        store = open_store(cohort)
        if store.patch_size != run_cohort.patch_size or store.n_landmarks != model.n_landmarks:
            raise UserError(f"{cohort.store_path}: store has {store.n_landmarks} landmarks of {store.patch_size}³ "
                            f"but run {run_dir} was trained on {model.n_landmarks} of {run_cohort.patch_size}³; "
                            f"preprocess the cohort with the run's patch settings (copd-ifm preprocess --set "
                            f"patch_size={run_cohort.patch_size} --set spacing_mm={run_cohort.spacing_mm:g})")
        table = embed_store(model.subject_encoder(), store, cfg.graph == "subject", cohort, workers, nodes_out,
                            desc=f"extract {run_dir.name}")
    out = Path(out) if out else run_dir / FEATURES_FILE
    meta = {"run": run_dir.name, "config_hash": cfg_io.config_hash(cfg), "cohort": cohort.name,
            EPSILON_KEY: cfg.loss.epsilon, "store": str(cohort.store_path)}
    return write_features(out, table, meta)


def embed_store(encoder: SubjectEncoder, store: PatchStore, subject_graph: bool, cohort: CohortConfig,
                workers: int = 2, nodes_out: str | Path | None = None, desc: str = "extract") -> pd.DataFrame:
    """The features table ``[n_subjects, 1 + 2F]`` (``sid``, ``graph_f*``, ``patch_f*``) of every subject of
    ``store`` through ``encoder`` (eval mode, on its device); ``subject_graph``: each subject's own graph."""
    dev = encoder.landmark_coords.device
    coords = torch.as_tensor(store.landmark_coords, dtype=torch.float32, device=dev)
    if coords.shape != encoder.landmark_coords.shape or not torch.allclose(coords, encoder.landmark_coords, atol=1e-5):
        raise UserError(f"{cohort.store_path}: landmark grid differs from the encoder's; preprocess with the same "
                        f"landmark_step_mm, landmark_min_lung_fraction and atlas as the encoder's training cohort")
    rows, node_rows = [], []
    encoder.eval()
    with torch.no_grad():
        # the bar leads the zip so that it sees its iterator end and closes at n/n
        for patches, sid in zip(tqdm(loader(SubjectDataset(store), workers, batch_size=1), total=len(store.sids),
                                     desc=desc, unit="subject"), store.sids):
            edges = store.subject_graph(sid).to(dev) if subject_graph else encoder.edge_index
            nodes, feats = encoder(patches[0].to(dev), edges)                   # [L, F] each
            rows.append(np.concatenate([nodes.mean(0).cpu().numpy(), feats.mean(0).cpu().numpy()]))
            if nodes_out is not None:
                node_rows.append(nodes.cpu().numpy().astype(np.float16))
    columns = ([f"graph_f{i}" for i in range(encoder.graph_encoder.feat_dim)]
               + [f"patch_f{i}" for i in range(encoder.patch_encoder.feat_dim)])
    table = pd.DataFrame(np.stack(rows), columns=columns)
    table.insert(0, "sid", store.sids)
    if nodes_out is not None:
        files.save_npy(nodes_out, np.stack(node_rows))
    return table


def encoder_cohort(cohort: CohortConfig, spec: dict[str, Any], store: str | Path | None = None) -> CohortConfig:
    """``cohort`` with the exported encoder's store settings (and ``store`` as its patch store, if given)."""
    changed = sorted(k for k, v in spec["store"].items() if store_settings(cohort).get(k) != v)
    if changed:
        log.info("cohort %r: preprocessing with the encoder's %s instead of the cohort's", cohort.name,
                 ", ".join(f"{k}={spec['store'][k]!r}" for k in changed))
    data = cfg_io.merge(cfg_io.to_dict(cohort), spec["store"])
    if store is not None:
        data["store"] = str(store)
    return cfg_io.from_dict(CohortConfig, data, f"cohort {cohort.name!r} with the encoder's store settings")


def _check_store_settings(cohort: CohortConfig, folder: Path) -> None:
    """A store already at the cohort's path must have been built with the encoder's settings."""
    path = cohort.store_path / "config.yaml"
    if not path.is_file():
        return
    built = store_settings(cfg_io.from_dict(CohortConfig, cfg_io.read_yaml(path), str(path)))
    wanted = store_settings(cohort)
    diff = [k for k in wanted if built.get(k) != wanted[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{cohort.store_path}: store built with {k}={built.get(k)!r} but encoder {folder} needs "
                        f"{k}={wanted[k]!r}{f' (and {len(diff) - 1} more)' if len(diff) > 1 else ''}; give "
                        f"--store NEW_FOLDER to preprocess the cohort again with the encoder's settings")


def extract_with_encoder(folder: str | Path, cohort: CohortConfig, out: str | Path | None = None,
                         store: str | Path | None = None, device: str = "auto", workers: int = 2) -> Path:
    """Preprocess ``cohort`` with an exported CT encoder's store settings (subjects already done are kept),
    embed every subject → features table (default ``<cohort>-<run>-features.parquet``); returns its path."""
    from copd_ifm import load_encoder
    from copd_ifm.ct.preprocess import preprocess_cohort

    folder = Path(folder)
    with session(device) as info:
        encoder, spec = load_encoder(folder, info.device)
        if spec["kind"] != "ct-context":
            raise UserError(f"--encoder {folder}: a {spec['kind']} encoder; CT extract needs one exported from a "
                            f"CT run")
        cohort = encoder_cohort(cohort, spec, store)
        _check_store_settings(cohort, folder)
        patch_store = preprocess_cohort(cohort, workers=workers)
        if len(patch_store.failures):
            log.warning("%d subject(s) of %r failed preprocessing and have no features (%s)",
                        len(patch_store.failures), cohort.name, patch_store.path / "failures.csv")
        table = embed_store(encoder, patch_store, spec["graph"] == "subject", cohort, workers)
    run = spec["run"]
    out = Path(out) if out else Path(f"{cohort.name}-{run['name']}-features.parquet")
    meta = {"run": run["name"], "config_hash": run["config_hash"], "encoder": str(folder.resolve()),
            "cohort": cohort.name, EPSILON_KEY: spec["loss"]["epsilon"], "store": str(cohort.store_path)}
    return write_features(out, table, meta)
