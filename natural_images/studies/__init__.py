"""Feature-suppression studies (the IFM paper's Figs. 2, 3 and 6) on Trifeature and STL-digits.

A study is a list of runs; a run is one SimCLR pretraining
(:func:`natural_images.train.pretrain`), the per-feature linear read-out of its
frozen encoder (:func:`natural_images.linear.linear_readout`) and its final
InfoNCE loss (:func:`final_infonce`). With ``control: true`` (default) each seed
also gets an untrained-encoder control: the same architecture with the
trained runs' initial weights, read out and measured alike (``controls: n``
adds initialisations up to seed n − 1; the report tests each seed's trained
mean against all of them). Studies
(``configs/vision/studies/<study>-<scale>.yaml``):

* ``difficulty``: τ sweep (β = 0) and hard-negative β sweep (τ fixed); accuracy
  per feature vs τ and vs β.
* ``ifm``: τ × {baseline, IFM ε} × seeds; bars per feature, IFM − baseline
  paired over seeds with a 95 % interval per cell.
* ``correlation``: encoders over a τ × β grid; Pearson r (95 % CI) of final
  InfoNCE loss vs read-out error per feature and between features.

Modules: :mod:`.config` (StudyConfig), :mod:`.plan` (runs and their configs),
:mod:`.run` (dataset, runs, controls), :mod:`.report` (finished results, tables,
plots, ``summary.md``). Study folder::

    OUT/study.yaml                 resolved StudyConfig (a rerun with other settings is refused)
    OUT/runs/<run_id>/             the run folder (config.yaml, linear.json, epochs.csv, curves.png, ...);
                                   checkpoint.pt only while the run is unfinished or with keep_checkpoints
    OUT/runs/<run_id>/result.json  the run's results, written atomically last: a run with it is finished
    OUT/runs/untrained_seed<s>/    the untrained-encoder control of seed s (same files)
    OUT/results.csv                one row per finished run; OUT/controls.csv: one per finished control
    OUT/<study>.png                the study's plots (see natural_images.study_plots)
    OUT/summary.md                 scale and limits, verdict, tables, the paper's claim beside ours

Interrupted runs resume from their last epoch, finished runs are skipped, and
``shard=(K, N)`` runs every N-th run from the K-th, so N processes (one per
GPU: ``CUDA_VISIBLE_DEVICES=K``) share a study; every process re-aggregates
what has finished when it ends.

Final InfoNCE loss (ours; the paper does not define it further): plain InfoNCE
(ε = 0, β = 0) at the run's own τ, encoder and head in eval mode, on
``loss_batches`` batches of ``N = min(batch size, images)`` pairs of two
augmented views of the training split, in a fixed order; at chance (all
similarities equal) it is ln(2N − 1).
"""
from natural_images.studies.config import (DATASETS, SCALES, STUDIES, STUDY_CONFIG_DIR, DigitsData, StudyConfig,
                                           TrifeatureData, data_size, load_study_config)
from natural_images.studies.plan import plan_controls, plan_runs, run_config
from natural_images.studies.report import aggregate, collect_results, ifm_cells, paired_difference
from natural_images.studies.run import ensure_dataset, execute_run, final_infonce, run_study

__all__ = ["DATASETS", "SCALES", "STUDIES", "STUDY_CONFIG_DIR", "DigitsData", "StudyConfig",
           "TrifeatureData", "aggregate", "collect_results", "data_size", "ensure_dataset",
           "execute_run", "final_infonce", "ifm_cells", "load_study_config", "paired_difference", "plan_controls", "plan_runs",
           "run_config", "run_study"]
