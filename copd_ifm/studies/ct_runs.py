"""What the CT study kinds share: the study's synthetic cohort, each run's config, pretrain → extract, read-outs.

A CT run is a :class:`copd_ifm.studies.grid.RunPlan` whose values are dotted
pretrain-config fields (``loss.temperature``, ``loss.epsilon``, ``seed``); a
control is the untrained encoder of its seed. Its folder ``OUT/runs/<run_id>/``
holds the pretrain run (config.yaml, checkpoint.pt, summary.json),
``features.parquet``, optionally ``nodes.npy`` (``[n_subjects, L, F]`` float16
node embeddings) and one cached per-fold read-out per protocol
(``readout-<protocol>.csv``), computed when first asked for.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from copd_ifm import config as cfg_io
from copd_ifm import files
from copd_ifm.cohort.config import CohortConfig
from copd_ifm.cohort.phenotypes import check_nuisance
from copd_ifm.context.config import PretrainConfig
from copd_ifm.context.train import pretrain, resolve_pretrain_config, save_untrained
from copd_ifm.contrastive.checkpoint import Checkpointer
from copd_ifm.errors import UserError
from copd_ifm.evaluation.cv import chance_folds, cross_validate
from copd_ifm.evaluation.evaluate import densitometry_features, load_densitometry
from copd_ifm.evaluation.extract import extract_features
from copd_ifm.evaluation.features import FEATURES_FILE, read_feature_sets
from copd_ifm.evaluation.outcomes import Outcome
from copd_ifm.studies.folder import read_result, run_dir, write_result
from copd_ifm.studies.grid import RunPlan
from copd_ifm.studies.results import finished

EPSILON_FIELD = "loss.epsilon"
TAU_FIELD = "loss.temperature"
NODES_FILE = "nodes.npy"
#: Columns of a CT study's ``results.csv``: one row per run × features × target × metric, ``value`` the mean
#: over its folds (and repeats), ``fold_sd`` their sd. ``features`` of an untrained encoder: ``untrained``
#: (graph level) and ``untrained_patch``; of the controls: ``densitometry`` and ``chance``.
RESULT_COLUMNS = ["method", "epsilon", "tau", "seed", "features", "latent", "kind", "metric", "value", "fold_sd",
                  "folds_ok", "run_id"]
UNTRAINED_FEATURES = {"graph": "untrained", "patch": "untrained_patch"}


@dataclass
class StudyCohort:
    """The study's synthetic cohort (generated once under ``OUT/cohort``, preprocessed once into ``OUT/store``)."""

    n: int = 24
    seed: int = 0
    spacing_mm: float = 4.0
    patch_size: int = 8               # voxels at spacing_mm
    landmark_step_mm: float = 40.0
    nuisance: float = 1.0             # scale of the scanner differences between sites (0: none)
    workers: int = 2                  # processes for synthesis and preprocessing

    def validate(self) -> None:
        if self.n < 10:
            raise ValueError(f"cohort.n must be >= 10 for a cross-validated read-out, got {self.n}")
        if self.workers < 1:
            raise ValueError(f"cohort.workers must be >= 1, got {self.workers}")
        check_nuisance(self.nuisance)


@dataclass
class Target:
    """One read-out target: ``y`` sid-indexed (no NaN), ``folds`` one fold assignment per CV repeat."""

    outcome: Outcome
    y: pd.Series
    folds: list[pd.Series]
    is_latent: bool = False


def method(plan: RunPlan) -> str:
    """``untrained`` (a control), ``baseline`` (ε = 0) or ``ifm``."""
    if plan.control:
        return "untrained"
    return "ifm" if plan.get(EPSILON_FIELD, 0.0) > 0 else "baseline"


def epsilon(plan: RunPlan) -> float:
    """The run's ε (NaN for a control)."""
    return math.nan if plan.control else float(plan.get(EPSILON_FIELD, 0.0))


def tau(plan: RunPlan) -> float:
    """The run's swept τ (NaN for a control; a trained run always has one: the study's plan sets it)."""
    return float(plan.get(TAU_FIELD, math.nan))


def cohort_config(name: str, c: StudyCohort, out: Path) -> CohortConfig:
    """The study's cohort: generated in ``OUT/cohort``, its patch store in ``OUT/store``."""
    data = {"name": name, "manifest": str(out.absolute() / "cohort" / "manifest.csv"),
            "store": str(out.absolute() / "store"), "spacing_mm": c.spacing_mm, "patch_size": c.patch_size,
            "landmark_step_mm": c.landmark_step_mm,
            "synthetic": {"n": c.n, "seed": c.seed, "nuisance": c.nuisance}}
    return cfg_io.from_dict(CohortConfig, data, f"study {name} cohort")


def prepare_cohort(name: str, c: StudyCohort, out: Path) -> CohortConfig:
    """Generate and preprocess the study's cohort once (concurrent shards wait on a file lock)."""
    from copd_ifm.cohort.synthetic import generate_cohort
    from copd_ifm.ct.preprocess import preprocess_cohort
    from copd_ifm.ct.store import PatchStore

    cohort = cohort_config(name, c, out)
    out.mkdir(parents=True, exist_ok=True)
    with files.file_lock(out / ".cohort.lock", "the study's cohort"):
        generate_cohort(cohort.root, n=c.n, seed=c.seed, spacing_mm=c.spacing_mm, workers=c.workers,
                        nuisance=c.nuisance)
        try:
            complete = len(PatchStore(cohort.store_path).index) == c.n
        except UserError:
            complete = False
        if not complete:
            preprocess_cohort(cohort, workers=c.workers)
    return cohort


def run_config(pretrain_name: str, overrides: dict[str, Any], cohort: CohortConfig, plan: RunPlan,
               device: str = "auto") -> PretrainConfig:
    """The pretrain config of one run: the YAML, the study's overrides, then the run's sweep point and seed
    (a control: ε = 0, the architecture and initial weights of its seed's runs)."""
    # flattened: a nested group given with --set replaces only the fields it names
    items = [f"{k}={json.dumps(v)}" for k, v in cfg_io.flatten(overrides).items()]
    items += [f"{k}={json.dumps(v)}" for k, v in plan.values]
    items += [f"device={device}", f"name={plan.run_id}"] + ([f"{EPSILON_FIELD}=0.0"] if plan.control else [])
    return resolve_pretrain_config(pretrain_name, cohort, overrides=items)


def train_and_extract(cfg: PretrainConfig, cohort: CohortConfig, plan: RunPlan, folder: Path, device: str,
                      nodes: bool = False) -> None:
    """Pretrain (or resume; a control: save its untrained model), then extract ``features.parquet``
    (and ``nodes.npy`` when ``nodes``); whatever is already there is kept."""
    ckpt = Checkpointer(folder)
    if plan.control:
        if not ckpt.exists():
            save_untrained(cohort, cfg, folder)
    elif not (folder / "summary.json").is_file():
        pretrain(cohort, cfg, folder, resume=ckpt.exists())
    nodes_path = folder / NODES_FILE if nodes else None
    if not (folder / FEATURES_FILE).is_file() or (nodes_path is not None and not nodes_path.is_file()):
        extract_features(folder, cohort, device=device, workers=cfg.workers, nodes_out=nodes_path)


def execute(out: Path, plan: RunPlan, cfg: PretrainConfig, cohort: CohortConfig, device: str,
            read: Callable[[], object], nodes: bool = False) -> dict[str, Any]:
    """One CT run: a finished one returns its ``result.json``; else :func:`train_and_extract`, then ``read``
    (the study kind's read-outs), then ``result.json`` last (its plan, last-epoch losses and wall time)."""
    done = read_result(out, plan.run_id)
    if done is not None:
        return done
    started = time.time()
    folder = run_dir(out, plan.run_id)
    train_and_extract(cfg, cohort, plan, folder, device, nodes)
    read()
    return write_result(folder, {"run_id": plan.run_id, "method": method(plan), "epsilon": epsilon(plan),
                                 "tau": tau(plan), "seed": plan.seed, **final_losses(folder, cfg),
                                 "wall_s": round(time.time() - started, 1)})


def final_losses(folder: Path, cfg: PretrainConfig) -> dict[str, float]:
    """Last epoch's training losses and their chance values ln(K + 1) (K negatives: the queue length)."""
    summary = folder / "summary.json"
    history = json.loads(summary.read_text(encoding="utf-8")).get("history", []) if summary.is_file() else []
    last = history[-1] if history else {}
    return {"epochs": cfg.schedule.epochs,
            "patch_loss": last.get("patch_loss", math.nan), "graph_loss": last.get("graph_loss", math.nan),
            "patch_acc": last.get("patch_acc", math.nan), "graph_acc": last.get("graph_acc", math.nan),
            "patch_chance": math.log(cfg.moco.patch_queue + 1), "graph_chance": math.log(cfg.moco.graph_queue + 1)}


def densitometry_table(cohort: CohortConfig) -> pd.DataFrame:
    """%LAA-950, Perc15 and lung volume of every subject from the store index (sid-indexed ``[n, 3]``)."""
    return densitometry_features(load_densitometry(cohort), str(cohort.store_path))


def read_out(feature_sets: dict[str, pd.DataFrame], targets: Sequence[Target], samples_per_dim: int,
             readout: str) -> pd.DataFrame:
    """Per-fold CV read-out of every target from every feature set (``cv.RESULT_COLUMNS`` plus ``repeat``)."""
    frames = [cross_validate(feature_sets, t.y, folds, t.outcome, samples_per_dim, readout=readout)
              .results.assign(repeat=r) for t in targets for r, folds in enumerate(t.folds)]
    return pd.concat(frames, ignore_index=True)


def chance_readout(targets: Sequence[Target]) -> pd.DataFrame:
    """Per-fold chance scores: each test fold predicted by its training part's mean (R²) or majority level."""
    return pd.concat([chance_folds(t.y, folds, t.outcome).assign(repeat=r) for t in targets
                      for r, folds in enumerate(t.folds)], ignore_index=True)


def feature_sets(folder: Path) -> dict[str, pd.DataFrame]:
    """The run's feature sets by level (``graph``, ``patch``)."""
    return {name.rsplit("/", 1)[-1]: frame for name, frame in read_feature_sets(folder).items()}


def run_readout(out: Path, plan: RunPlan, targets: Sequence[Target], samples_per_dim: int,
                readout: str, levels: Sequence[str] | None = None) -> pd.DataFrame:
    """The run's per-fold read-out under ``readout`` of its feature sets ``levels`` (default all): cached in
    ``readout-<protocol>.csv``, computed if missing."""
    path = run_dir(out, plan.run_id) / f"readout-{readout}.csv"
    if path.is_file():
        return pd.read_csv(path)
    sets = feature_sets(run_dir(out, plan.run_id))
    table = read_out({k: v for k, v in sets.items() if levels is None or k in levels}, targets, samples_per_dim,
                     readout)
    files.atomic_write_text(path, table.to_csv(index=False))
    return table


def readouts(out: Path, plans: Sequence[RunPlan], targets: Sequence[Target], samples_per_dim: int,
             readout: str, levels: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`run_readout` of every plan (run id → table), with a progress bar for the ones computed now."""
    todo = {p.run_id for p in plans if not (run_dir(out, p.run_id) / f"readout-{readout}.csv").is_file()}
    with tqdm(total=len(todo), desc=f"read-out ({readout})", unit="run", disable=not todo) as bar:
        tables = {}
        for plan in plans:
            tables[plan.run_id] = run_readout(out, plan, targets, samples_per_dim, readout, levels)
            bar.update(plan.run_id in todo)
    return tables


def _tagged(per_fold: pd.DataFrame, method_name: str, plan: RunPlan | None) -> pd.DataFrame:
    table = per_fold.rename(columns={"method": "features"})
    if plan is None:
        return table.assign(method=method_name, epsilon=math.nan, tau=math.nan, seed=math.nan, run_id="")
    if plan.control:
        table["features"] = table["features"].map(UNTRAINED_FEATURES)
    return table.assign(method=method_name, epsilon=epsilon(plan), tau=tau(plan), seed=plan.seed, run_id=plan.run_id)


def per_fold_results(out: Path, plans: Sequence[RunPlan], targets: Sequence[Target], density: pd.DataFrame,
                     samples_per_dim: int, readout: str,
                     levels: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-fold rows of every finished run (its feature sets ``levels``, default all), densitometry and chance
    under ``readout``, the finished runs' ``result.json`` rows). Per-fold columns: ``cv.RESULT_COLUMNS`` with
    ``method`` renamed ``features``, plus repeat, method, epsilon, tau, seed and run_id."""
    done = finished(out, plans)
    tables = readouts(out, [plan for plan, _ in done], targets, samples_per_dim, readout, levels)
    # a cache written before the study narrowed its levels may hold more feature sets: keep the asked ones
    frames = [_tagged(t[t["method"].isin(levels)] if levels is not None else t, method(plan), plan)
              for plan, t in ((plan, tables[plan.run_id]) for plan, _ in done)]
    frames.append(_tagged(read_out({"densitometry": density}, targets, samples_per_dim, readout), "densitometry", None))
    frames.append(_tagged(chance_readout(targets), "chance", None))
    return pd.concat(frames, ignore_index=True), pd.DataFrame([r for _, r in done])


def fold_means(per_fold: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_fold_results` rows → :data:`RESULT_COLUMNS` (R² for continuous targets; accuracy and 1-off
    for ordinal ones)."""
    rows = []
    for _, group in per_fold.groupby(["run_id", "method", "features", "outcome"], sort=False):
        first = group.iloc[0]
        for metric in (("r2",) if first["kind"] == "continuous" else ("accuracy", "one_off")):
            values = group[metric].astype(float)
            rows.append({"method": first["method"], "epsilon": first["epsilon"], "tau": first["tau"],
                         "seed": first["seed"], "features": first["features"], "latent": first["outcome"],
                         "kind": first["kind"], "metric": metric, "value": values.mean(), "fold_sd": values.std(),
                         "folds_ok": int(values.notna().sum()), "run_id": first["run_id"]})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def training_lines(runs: pd.DataFrame) -> list[str]:
    """Report lines: each level's last-epoch training loss and instance accuracy per method against chance."""
    trained = runs[runs["method"] != "untrained"] if not runs.empty else runs
    if trained.empty:
        return ["- No trained run has finished yet."]
    lines = []
    for level in ("patch", "graph"):
        loss, chance = trained[f"{level}_loss"], trained[f"{level}_chance"].iloc[0]
        for method, group in trained.groupby("method"):
            values = group[f"{level}_loss"]
            lines.append(f"- {level}-level training loss after {int(trained['epochs'].iloc[0])} epochs, {method}: "
                         f"{values.mean():.3f} (range {values.min():.3f}–{values.max():.3f}, {len(values)} runs) vs its "
                         f"chance value ln(K + 1) = {chance:.3f} (K = {round(math.exp(chance) - 1)} queue negatives)"
                         + ("" if method == "baseline" else "; for ε > 0 this is the IFM objective (L + L_ε)/2, "
                            "which is above plain InfoNCE by construction"))
            acc = group[f"{level}_acc"]
            if acc.notna().any():
                lines.append(f"  - its instance accuracy on the unperturbed logits (positive above every negative): "
                             f"{acc.mean():.3f} (range {acc.min():.3f}–{acc.max():.3f}) vs chance "
                             f"1/(K + 1) = {math.exp(-chance):.4f}")
        if loss.notna().any() and not (trained.loc[trained["method"] == "baseline", f"{level}_loss"]
                                       < chance - 0.5).all():
            lines.append(f"- Caution: the baseline's {level}-level loss is not clearly (0.5 nats) below chance in every "
                         f"run: the loss alone does not show that level trained (its instance accuracy above is the "
                         f"other evidence), and a barely trained encoder's read-out says little about suppression.")
    return lines
