"""The COPD outcomes, defined once: what each is, its kind and how it is computed.

A cohort maps canonical source names (``FEV1pp``, ``FEV1FVC``, ``GOLD``,
``CLE``, ``Paraseptal``, ``mMRC``) to its manifest's column names
(:attr:`copd_ifm.cohort.config.CohortConfig.outcomes`); the outcomes below
read those sources.

=========== ========== =====================================================
outcome     kind       definition
=========== ========== =====================================================
logFEV1pp   continuous ``log(FEV1pp)``, FEV1 % predicted
logFEV1FVC  continuous ``log(FEV1/FVC)``
CLE         ordinal    centrilobular emphysema visual score, 6 levels 0–5
Paraseptal  ordinal    para-septal emphysema visual score, 3 levels 0–2
mMRC        ordinal    mMRC dyspnoea score, 5 levels 0–4
=========== ========== =====================================================

Ordinal sources hold integer codes ``0 … levels−1`` (COPDGene's coding; floats
such as ``2.0`` are accepted). An empty cell, or a non-positive value under a
log, is a missing outcome for that subject only. Whether FEV1/FVC is stored as
a ratio or a percentage does not matter for the read-out as long as every value
uses the same unit: the log shifts by a constant, which the regression's
intercept absorbs. :func:`range_warnings` flags values outside physiological
ranges (:data:`PLAUSIBLE`), including ratios that look like percentages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from copd_ifm.cohort.config import read_manifest_csv
from copd_ifm.errors import ManifestNotFound, UserError


@dataclass(frozen=True)
class Outcome:
    """One outcome: ``kind`` decides the model (OLS or ordinal logit) and the metrics."""

    name: str
    kind: Literal["continuous", "ordinal"]
    source: str                      # canonical source name in CohortConfig.outcomes
    description: str
    levels: tuple[str, ...] = ()     # ordinal: label of code 0, 1, …

    @property
    def ordinal(self) -> bool:
        return self.kind == "ordinal"


OUTCOMES: dict[str, Outcome] = {o.name: o for o in (
    Outcome("logFEV1pp", "continuous", "FEV1pp", "log of FEV1 % predicted"),
    Outcome("logFEV1FVC", "continuous", "FEV1FVC", "log of FEV1/FVC"),
    Outcome("CLE", "ordinal", "CLE", "centrilobular emphysema visual score",
            ("none", "trace", "mild", "moderate", "confluent", "advanced destructive")),
    Outcome("Paraseptal", "ordinal", "Paraseptal", "para-septal emphysema visual score",
            ("none", "mild", "substantial")),
    Outcome("mMRC", "ordinal", "mMRC", "mMRC dyspnoea score", ("0", "1", "2", "3", "4")),
)}


#: Physiological range of each continuous source (low exclusive, high inclusive) and what a value outside says.
PLAUSIBLE: dict[str, tuple[float, float, str]] = {
    "FEV1pp": (0.0, 200.0, "FEV1 % predicted lies in (0, 200]"),
    "FEV1FVC": (0.0, 1.5, "FEV1/FVC is a ratio, at most about 1; a value like 70 looks like a percent"),
}


def range_warnings(outcomes: list[Outcome], manifest: pd.DataFrame, mapping: dict[str, str],
                   where: str = "manifest") -> list[str]:
    """One line per chosen source with values outside :data:`PLAUSIBLE`: how many, an example, the rule.

    Non-positive values are already treated as missing (log undefined); the
    line says so. Values above the range are kept (the unit may be consistent).
    """
    lines = []
    for source in dict.fromkeys(o.source for o in outcomes if o.source in PLAUSIBLE):
        low, high, rule = PLAUSIBLE[source]
        values = _source_column(manifest, mapping, source, where).dropna()
        for bad, effect in ((values[values <= low], "treated as missing"), (values[values > high], "kept")):
            if len(bad):
                lines.append(f"{where}: {mapping[source]} ({source}) of {len(bad)} subject(s) out of range, e.g. "
                             f"sid {bad.index[0]!r} = {bad.iloc[0]:g} ({effect}); {rule}")
    return lines


def parse_outcomes(names: list[str] | str) -> list[Outcome]:
    """``"logFEV1pp,CLE"`` or a list of names → outcomes; unknown names list the valid ones."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise UserError(f"--outcomes is empty; choose from {', '.join(OUTCOMES)}")
    unknown = [n for n in items if n not in OUTCOMES]
    if unknown:
        raise UserError(f"--outcomes: unknown outcome {unknown[0]!r} (valid: {', '.join(OUTCOMES)})")
    return [OUTCOMES[n] for n in dict.fromkeys(items)]


def read_manifest(path: Path, cohort: str = "cohort") -> pd.DataFrame:
    """Manifest CSV → frame indexed by ``sid`` (as text); missing file or ``sid`` column is a UserError."""
    if not path.is_file():
        raise ManifestNotFound(cohort, path, ManifestNotFound.FIX + "; a synthetic cohort's is written by "
                               "`copd-ifm preprocess --cohort NAME`")
    frame = read_manifest_csv(path, dtype={"sid": str})
    if "sid" not in frame.columns:
        raise UserError(f"{path}: no 'sid' column (add one with a unique id per subject)")
    if frame["sid"].duplicated().any():
        dup = frame.loc[frame["sid"].duplicated(), "sid"].iloc[0]
        raise UserError(f"{path}: sid {dup!r} appears more than once (sids must be unique)")
    return frame.set_index("sid")


def _source_column(manifest: pd.DataFrame, mapping: dict[str, str], source: str, where: str) -> pd.Series:
    if source not in mapping:
        raise UserError(f"cohort config: outcomes has no {source!r} entry "
                        f"(add outcomes.{source}: <manifest column>)")
    column = mapping[source]
    if column not in manifest.columns:
        raise UserError(f"{where}: no column {column!r} for {source} (columns: "
                        f"{', '.join(map(str, manifest.columns))}; fix outcomes.{source} in the cohort config)")
    values = pd.to_numeric(manifest[column], errors="coerce")
    bad = manifest[column].notna() & values.isna()
    if bad.any():
        raise UserError(f"{where}: column {column!r} has non-numeric value {manifest.loc[bad, column].iloc[0]!r} "
                        f"for sid {bad[bad].index[0]!r} (use numbers; leave the cell empty when unknown)")
    return values.astype(float)


def outcome_values(outcome: Outcome, manifest: pd.DataFrame, mapping: dict[str, str],
                   where: str = "manifest") -> pd.Series:
    """One outcome for every subject of ``manifest`` (sid-indexed); NaN where missing.

    Continuous outcomes are natural logs (no unit); ordinal outcomes are integer
    codes ``0 … len(levels)−1`` stored as float so NaN can mark a missing value.
    ``where`` names the manifest file in error messages.
    """
    values = _source_column(manifest, mapping, outcome.source, where)
    if outcome.kind == "continuous":
        # log of a non-positive reading is undefined: treat it as a missing measurement
        return np.log(values.where(values > 0)).rename(outcome.name)
    codes = values.dropna()
    invalid = codes[(codes != np.round(codes)) | (codes < 0) | (codes >= len(outcome.levels))]
    if len(invalid):
        column = mapping[outcome.source]
        raise UserError(f"{where}: column {column!r} ({outcome.name}) has value {invalid.iloc[0]:g} for sid "
                        f"{invalid.index[0]!r}; expected integer codes 0..{len(outcome.levels) - 1} "
                        f"({', '.join(f'{i}={lab}' for i, lab in enumerate(outcome.levels))})")
    return values.rename(outcome.name)
