"""``copd-ifm study shortcut``: does IFM reduce feature suppression on (synthetic) lung CT?

:mod:`.plan` (config and runs), :mod:`.run` (cohort, runs, read-out),
:mod:`.report` (results.csv, summary.md) and :mod:`.plots` (figures).
"""
