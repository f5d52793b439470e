"""`visualize-ifm` on a context-aware CT run: nearest subjects to IFM-perturbed graph embeddings."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from copd_ifm.cli import main
from copd_ifm.context.augment import PatchAugment
from copd_ifm.context.data import SubjectDataset
from copd_ifm.context.train import load_trained, open_store, pretrain, resolve_pretrain_config
from copd_ifm.contrastive.rundir import run_kind

FAST = ["model.channels=[4, 8]", "model.feat_dim=16", "model.embed_dim=16", "moco.patch_queue=16",
        "moco.graph_queue=8", "moco.momentum=0.9", "schedule.patch_batch=4", "schedule.graph_batch=4",
        "schedule.landmarks_per_epoch=6", "schedule.graph_subepochs=1", "schedule.graph_views=feature",
        "workers=0", "device=cpu", "log_every=1", "optim.lr=0.05", "schedule.epochs=1",
        "schedule.patch_level=false"]  # the graph level alone: the grid reads only its query branch


def test_ct_neighbour_grid_retrieves_the_subject_itself_at_eps_zero(tiny_cohort, tmp_path, capsys):
    run = pretrain(tiny_cohort, resolve_pretrain_config("ifm", tiny_cohort, overrides=FAST), tmp_path / "run")
    assert run_kind(run) == "ct"
    out = tmp_path / "vis"
    assert main(["visualize-ifm", "--run", str(run), "--eps", "0.5,2", "--anchors", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "bank of 6 subjects" in capsys.readouterr().out
    result = json.loads((out / "ifm_neighbours.json").read_text(encoding="utf-8"))
    assert result["eps"] == [0.0, 0.5, 2.0] and result["anchor_index"] == [0, 2, 5]
    # Brute force: the bank as one batch of all six subjects through the graph query branch, the anchors redrawn.
    model, cohort, cfg = load_trained(run)
    store = open_store(cohort)
    subjects = torch.stack([SubjectDataset(store)[i] for i in range(6)])
    with torch.no_grad():
        bank = F.normalize(model.graph.encoder_q(*model.graph_inputs(model.node_features(subjects), 6)), dim=1)
        torch.manual_seed(0)
        augment = PatchAugment(cfg.augment)
        views = [augment(subjects[i], torch.zeros(store.n_landmarks, dtype=torch.long)) for i in result["anchor_index"]]
        anchors = F.normalize(model.graph.encoder_q(*model.graph_inputs(model.node_features(torch.stack(views)), 3)),
                              dim=1)
    # One epoch on six near-identical synthetic subjects leaves their embeddings within ~1e-6 in cosine, so a
    # retrieved subject is checked up to float ties: its cosine to the key is the maximum within 1e-6.
    for a, (i, j) in enumerate(zip(result["anchor_index"], result["negative_index"])):
        for c, e in enumerate(result["eps"]):
            for name, key in (("pos", bank[i] - e * anchors[a]), ("neg", bank[j] + e * anchors[a])):
                cos = (bank @ key / key.norm()).numpy()
                got = result[f"{name}_index"][a][c]
                assert cos[got] >= cos.max() - 1e-6
                assert result[f"{name}_cos"][a][c] == pytest.approx(float(bank[got] @ anchors[a]), abs=1e-5)
        # ε = 0: the positive itself, up to such ties
        assert float(bank[result["pos_index"][a][0]] @ bank[i]) == pytest.approx(1.0, abs=1e-6)
    with Image.open(out / "ifm_neighbours.png") as png:
        assert png.size[0] > 300 and png.size[1] > 600
