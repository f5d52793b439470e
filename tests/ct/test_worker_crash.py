"""A worker process that dies fails only its own subject. Kept light: spawned workers import this module."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import SimpleITK as sitk

from copd_ifm.ct.subject import work


def crashing_work(task):
    """Pool task of the test: the worker process dies on sid "crash", as on a segfault in a native library."""
    if task.sid == "crash":
        os._exit(3)
    return work(task)


@pytest.mark.slow
def test_a_worker_crash_fails_only_its_subject(tmp_path, monkeypatch):
    from copd_ifm.cohort.config import CohortConfig, RegistrationConfig
    from copd_ifm.ct import preprocess as preprocess_module
    from copd_ifm.ct.handmade import handmade_ct

    ct, _ = handmade_ct(4.0)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sids = ["a", "crash", "b", "c"]
    pd.DataFrame({"sid": sids, "image": ["ct.nii.gz"] * len(sids)}).to_csv(tmp_path / "manifest.csv", index=False)
    cohort = CohortConfig(name="t", manifest=str(tmp_path / "manifest.csv"), spacing_mm=4.0, patch_size=8,
                          store=str(tmp_path / "store"),
                          registration=RegistrationConfig(downsample_mm=8.0, shrink_factors=[2, 1],
                                                          smoothing_sigmas_mm=[4.0, 0.0]))
    monkeypatch.setattr(preprocess_module, "work", crashing_work)
    store = preprocess_module.preprocess_cohort(cohort, workers=2)
    assert store.sids == ["a", "b", "c"]
    assert list(store.failures["sid"]) == ["crash"] and "worker process died" in store.failures["reason"][0]
    assert not list((tmp_path / "store" / "records").glob("*.running"))
