"""The study folder: ``study.yaml`` (the settings its runs were made with), ``runs/<run_id>/``, ``result.json``.

A run whose folder holds ``result.json`` (written atomically, last) is finished.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from copd_ifm import config as cfg
from copd_ifm import files
from copd_ifm.errors import UserError

STUDY_FILE = "study.yaml"
RESULT_FILE = "result.json"


def run_dir(out: Path, run_id: str) -> Path:
    return out / "runs" / run_id


def is_finished(out: Path, run_id: str) -> bool:
    return (run_dir(out, run_id) / RESULT_FILE).is_file()


def read_result(out: Path, run_id: str) -> dict[str, Any] | None:
    """The run's ``result.json``, or None while it is unfinished."""
    path = run_dir(out, run_id) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_result(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write the run folder's ``result.json`` (its last file) and return ``result``."""
    files.atomic_write_text(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def check_or_save_study(study: Any, out: Path, growable: Sequence[str], runtime: Sequence[str] = ()) -> None:
    """Write ``OUT/study.yaml``; refuse to mix runs of different settings in one folder.

    Fields starting with a ``growable`` prefix may change (seeds and grids grow: new runs join), so may
    the ``runtime`` fields (where data lives, worker processes); a field newer than the saved file holds
    its default. Anything else is a different study.
    """
    path = out / STUDY_FILE
    if path.is_file():
        saved = cfg.flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        now = cfg.flatten(cfg.to_dict(study))
        default = cfg.flatten(cfg.to_dict(type(study)()))
        changed = sorted(k for k in saved.keys() | now.keys()
                         if not k.startswith(tuple(growable)) and k not in runtime
                         and saved.get(k, default.get(k)) != now.get(k))
        if changed:
            raise UserError(f"{path}: this folder holds a study with {changed[0]}={saved.get(changed[0])!r}, "
                            f"not {now.get(changed[0])!r}; use another --out (or delete the folder to start over)")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_resolved(study, path)


def check_report_keeps_runs(out: Path, table: str = "results.csv") -> None:
    """Refuse to rewrite a report rebuilt from run folders when ``OUT/table`` reports runs that are not here.

    Such a report is rebuilt from the runs' own files, so a study folder copied or committed without
    ``runs/`` cannot be re-reported, only restored.
    """
    saved = out / table
    if not saved.is_file():
        return
    ids = reported_runs(saved)
    missing = [i for i in ids if not is_finished(out, i)]
    if missing:
        raise UserError(f"{saved} reports {len(ids)} finished runs, but {len(missing)} of their run "
                        f"folders are not here (e.g. {run_dir(out, missing[0]) / RESULT_FILE}); rewriting would drop "
                        f"them: restore {out / 'runs'} or give another --out")


def reported_runs(table: Path) -> list[str]:
    """The distinct non-empty ``run_id`` values of a results table, in order."""
    ids = pd.read_csv(table, usecols=["run_id"])["run_id"].dropna().astype(str)
    return list(dict.fromkeys(i for i in ids if i))
