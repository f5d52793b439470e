"""Studies: many runs of one question, their controls and one report.

The framework (domain-free, floor only, shared by the CT and vision studies):
:mod:`.config` (a study's YAML, fields and ``--set``), :mod:`.grid` (runs = sweep points × seeds, plus untrained controls),
:mod:`.folder` (the study folder: ``study.yaml`` guard, run folders,
``result.json``), :mod:`.runner` (a shard's unfinished runs, crash-tolerant)
and :mod:`.results` (finished runs' results in plan order). A study *kind*
adds its config, how one run is executed and its report: the CT kinds live in
:mod:`.shortcut` and :mod:`.outcomes` (sharing :mod:`.ct_runs`), the vision
kinds in ``natural_images.studies``.
"""
