"""``copd-ifm extract``: subject features from a pretrained context-aware run.

For every subject of a patch store, with the query encoders in eval mode and
no augmentation:

* ``patch_f*``: the mean over landmarks of the patch encoder's features ``[L, F] → [F]``;
* ``graph_f*``: the mean over landmarks of the GCN node embeddings (the
  anchor's subject feature: node embeddings, not the pooled projection), on the
  run's context graph (the lattice, or with ``graph: subject`` each subject's own).

Optionally the per-landmark node embeddings themselves (``nodes_out``): a
float16 ``.npy`` of shape ``[n_subjects, L, F]`` in the table's subject order,
for regional read-outs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from copd_ifm import config as cfg_io
from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.context.data import SubjectDataset, loader
from copd_ifm.context.train import load_trained, open_store
from copd_ifm.contrastive.distributed import init_from_env
from copd_ifm.errors import UserError
from copd_ifm.evaluation.features import FEATURES_FILE, write_features


def extract_features(run_dir: str | Path, cohort: CohortConfig | None = None, out: str | Path | None = None,
                     device: str = "auto", workers: int = 2, nodes_out: str | Path | None = None) -> Path:
    """Embed every subject of ``cohort`` (default: the run's) → features table; returns its path.

    ``nodes_out``: also save the node embeddings ``[n_subjects, L, F]`` (float16 ``.npy``) there.
    """
    run_dir = Path(run_dir)
    dev = init_from_env(device).device
    model, run_cohort, cfg = load_trained(run_dir, dev)
    cohort = cohort or run_cohort
    store = open_store(cohort)
    if store.patch_size != run_cohort.patch_size or store.n_landmarks != model.n_landmarks:
        raise UserError(f"{cohort.store_path}: store has {store.n_landmarks} landmarks of {store.patch_size}³ but "
                        f"run {run_dir} was trained on {model.n_landmarks} of {run_cohort.patch_size}³; "
                        f"preprocess the cohort with the run's patch settings (copd-ifm preprocess --set "
                        f"patch_size={run_cohort.patch_size} --set spacing_mm={run_cohort.spacing_mm:g})")
    coords = torch.as_tensor(store.landmark_coords, dtype=torch.float32, device=dev)
    if not torch.allclose(coords, model.landmark_coords, atol=1e-5):
        raise UserError(f"{cohort.store_path}: landmark grid differs from the run's; preprocess with the same "
                        f"landmark_step_mm and atlas as cohort {run_cohort.name!r}")
    rows, node_rows = [], []
    with torch.no_grad():
        # the bar leads the zip so that it sees its iterator end and closes at n/n
        for patches, sid in zip(tqdm(loader(SubjectDataset(store), workers, batch_size=1), total=len(store.sids),
                                     desc=f"extract {Path(run_dir).name}", unit="subject"), store.sids):
            feats = model.node_features(patches.to(dev))                            # [L, F]
            edges = store.subject_graph(sid).to(dev) if cfg.graph == "subject" else model.edge_index
            nodes = model.graph_encoder.node_embeddings(feats, edges)               # [L, F]
            rows.append(np.concatenate([nodes.mean(0).cpu().numpy(), feats.mean(0).cpu().numpy()]))
            if nodes_out is not None:
                node_rows.append(nodes.cpu().numpy().astype(np.float16))
    dim = model.graph_encoder.feat_dim
    columns = [f"graph_f{i}" for i in range(dim)] + [f"patch_f{i}" for i in range(model.patch_encoder.feat_dim)]
    table = pd.DataFrame(np.stack(rows), columns=columns)
    table.insert(0, "sid", store.sids)
    if nodes_out is not None:
        files.save_npy(nodes_out, np.stack(node_rows))
    out = Path(out) if out else run_dir / FEATURES_FILE
    meta = {"run": run_dir.name, "config_hash": cfg_io.config_hash(cfg), "cohort": cohort.name,
            "ifm_epsilon": cfg.loss.epsilon, "store": str(cohort.store_path)}
    return write_features(out, table, meta)
