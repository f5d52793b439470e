"""The finished runs of a study, in plan order."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from copd_ifm.errors import UserError
from copd_ifm.studies.folder import STUDY_FILE, read_result
from copd_ifm.studies.runner import Planned


def finished(out: Path, plans: Sequence[Planned]) -> list[tuple[Any, dict[str, Any]]]:
    """``(plan, result.json)`` of every planned run that has finished, in plan order."""
    pairs = [(plan, read_result(out, plan.run_id)) for plan in plans]
    return [(plan, result) for plan, result in pairs if result is not None]


def collect_rows(out: Path, plans: Sequence[Planned], saved: Path | None = None,
                 first: Sequence[str] = ()) -> pd.DataFrame:
    """One row per finished run (its ``result.json``), in plan order; columns ``first`` lead.

    ``saved``: the study's own table of earlier results (e.g. ``OUT/results.csv``). A run whose folder
    is gone but whose row is there keeps that row, so a study folder copied or committed without its
    run folders keeps every result it reports; a row of a run the study does not plan is refused.
    """
    recorded: dict[str, dict[str, Any]] = {}
    if saved is not None and saved.is_file():
        frame = pd.read_csv(saved)
        if "run_id" in frame.columns:
            recorded = {str(r["run_id"]): r for r in frame.to_dict("records")}
    unplanned = sorted(recorded.keys() - {plan.run_id for plan in plans})
    if unplanned:
        raise UserError(f"{saved} holds {len(unplanned)} run(s) this study does not plan (e.g. {unplanned[0]}): it "
                        f"was made with other settings (see {out / STUDY_FILE}); pass those (--scale, --config, "
                        f"--seeds) or give another --out, so that its summary keeps every run")
    rows = []
    for plan in plans:
        result = read_result(out, plan.run_id)
        if result is not None:
            rows.append(result)
        elif plan.run_id in recorded:
            rows.append(recorded[plan.run_id])
    table = pd.DataFrame(rows)
    lead = [c for c in first if c in table.columns]
    return table[lead + [c for c in table.columns if c not in lead]]
