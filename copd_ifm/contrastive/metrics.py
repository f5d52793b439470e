"""Training metrics: TensorBoard + ``metrics.csv`` rows, and a throughput / data-wait meter."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from copd_ifm.contrastive import distributed as D
from copd_ifm.files import atomic_write


class MetricsLogger:
    """Scalars to TensorBoard (``RUN/tb``) and to ``RUN/metrics.csv`` (step, time, key, value); silent off rank 0.

    ``start_step``: the step the run (re)starts from. Rows after it, left by a killed
    attempt, are dropped (from the CSV and, by ``purge_step``, from TensorBoard), so no
    step appears twice: after a resume, and after a run that died before its first checkpoint.
    """

    def __init__(self, run_dir: str | Path, start_step: int = 0, enabled: bool | None = None) -> None:
        self.enabled = D.is_main() if enabled is None else enabled
        self.csv_path = Path(run_dir) / "metrics.csv"
        self._writer = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step)
            if self.csv_path.exists():
                self._truncate(start_step)

    def _truncate(self, step: int) -> None:
        with self.csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(kept)

        atomic_write(self.csv_path, write)

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)  # type: ignore[union-attr]
        now = round(time.time(), 3)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with self.csv_path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "time", "key", "value"])
            for key, value in metrics.items():
                writer.writerow([step, now, key, f"{value:.6g}"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Throughput:
    """Items per second and the share of time spent waiting for data, over a window of steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items, self.wait, self.total = 0, 0.0, 0.0
        self._mark = time.perf_counter()

    def wrap(self, iterable: Any) -> Iterator[Any]:
        """Iterate ``iterable``, timing how long each ``next`` blocks."""
        it = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            yield item

    def step(self, n_items: int) -> None:
        now = time.perf_counter()
        self.total += now - self._mark
        self._mark = now
        self.items += n_items

    @property
    def rate(self) -> float:
        return self.items / self.total if self.total > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return min(self.wait / self.total, 1.0) if self.total > 0 else 0.0
