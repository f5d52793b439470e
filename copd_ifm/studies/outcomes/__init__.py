"""``copd-ifm study outcomes``: does IFM beat the baseline on this cohort's outcomes? (the IFM paper's Table 2)

:mod:`.plan` (config and runs), :mod:`.run` (cohort, runs, read-outs),
:mod:`.compare` (IFM − baseline over seeds and within seeds, Holm) and
:mod:`.report` (table2.csv, comparisons.csv, summary.md, outcomes.png).
"""
