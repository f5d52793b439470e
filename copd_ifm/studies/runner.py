"""Running a shard of a study: its unfinished runs, one crash not stopping the sweep.

``shard=(K, N)`` takes every N-th run from the K-th, so N processes (one per
GPU or CPU core, on one or many nodes sharing the folder) split a study;
finished runs (``result.json``) are skipped, so rerunning resumes it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from tqdm import tqdm

from copd_ifm.errors import UserError
from copd_ifm.studies.folder import is_finished

log = logging.getLogger(__name__)


class Planned(Protocol):
    @property
    def run_id(self) -> str: ...


P = TypeVar("P", bound=Planned)


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--shard {k}/{n}: need 0 <= K < N, e.g. 0/2 and 1/2 for two processes")
    return shard


def run_shard(plans: Sequence[P], out: Path, execute: Callable[[P], object], shard: tuple[int, int] = (0, 1),
              desc: str = "study") -> list[str]:
    """Execute this shard's unfinished plans in order; returns the ids of those that crashed.

    A UserError (bad input or settings: every run would meet it) stops the shard at once; any other
    exception is logged and the next run starts: the crashed run is retried on the next invocation.
    """
    k, n = check_shard(shard)
    failed = []
    for plan in tqdm(list(plans)[k::n], desc=desc, unit="run"):
        if is_finished(out, plan.run_id):
            continue
        log.info("run %s", plan.run_id)
        try:
            execute(plan)
        except UserError:
            raise
        except Exception:  # one crashed run must not stop a long sweep
            log.exception("run %s failed", plan.run_id)
            failed.append(plan.run_id)
    return failed


def raise_if_failed(failed: Sequence[str]) -> None:
    """After the report: a non-zero exit naming the crashed runs and how to retry them."""
    if failed:
        raise UserError(f"{len(failed)} run(s) failed ({', '.join(failed)}); see the log above, then rerun the "
                        "same command to retry them (finished runs are kept)")
