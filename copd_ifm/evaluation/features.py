"""Features tables: one row per subject, written by ``extract`` and read by ``evaluate``.

Format: a parquet (or CSV) table with a text column ``sid`` and float feature
columns. Feature *sets* are named by prefix: ``graph_f0 … graph_f{D−1}`` and
``patch_f0 …`` are two sets in one table; plain ``f0 … f{D−1}`` is a single
set. Parquet schema metadata under the key ``b"copd_ifm"`` holds JSON such as
``{"run": "demo-ifm", "config_hash": "…"}``. A run folder's table is
``RUN/features.parquet``.

Each set becomes one *method* of the evaluation, named ``<run>/<set>`` (just
``<run>`` for a plain ``f*`` table). The run name is the metadata's ``run``,
else the run folder's name for ``features.parquet``, else the file's stem.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from copd_ifm.errors import UserError
from copd_ifm.files import atomic_write, atomic_write_text

#: File name of a run's features table (``extract``'s default output).
FEATURES_FILE = "features.parquet"
#: Parquet schema metadata key holding the JSON metadata.
META_KEY = b"copd_ifm"

_COLUMN = re.compile(r"^(?:(?P<set>[A-Za-z][A-Za-z0-9_]*?)_)?f(?P<index>\d+)$")


def _feature_sets(columns: list[str], where: Path) -> dict[str, list[str]]:
    """Feature column names → {set name ("" for plain f*): columns ordered by index}."""
    sets: dict[str, list[tuple[int, str]]] = {}
    for column in columns:
        match = _COLUMN.match(column)
        if match is None:
            raise UserError(f"{where}: column {column!r} is not a feature column "
                            f"(expected f<i> or <set>_f<i>, e.g. graph_f0; remove or rename it)")
        sets.setdefault(match["set"] or "", []).append((int(match["index"]), column))
    if not sets:
        raise UserError(f"{where}: no feature columns (expected f0..f<D-1> or <set>_f0..)")
    return {name: [c for _, c in sorted(items)] for name, items in sets.items()}


def write_features(path: str | Path, df: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write a features table atomically (temp file + rename).

    ``df``: column ``sid`` (unique) and feature columns ``f<i>`` or ``<set>_f<i>``
    (finite numbers), shape ``[n_subjects, 1 + D]``. ``meta``: JSON-serialisable,
    should hold ``run`` and ``config_hash``. ``.parquet`` stores ``meta`` in the
    schema metadata; ``.csv`` stores it in a sidecar ``<path>.json``.
    """
    path = Path(path)
    if "sid" not in df.columns:
        raise ValueError("features frame needs a 'sid' column")
    columns = [c for c in df.columns if c != "sid"]
    _feature_sets(columns, path)
    table = df[["sid", *columns]].copy()
    table["sid"] = table["sid"].astype(str)
    if table["sid"].duplicated().any():
        raise ValueError(f"duplicate sid {table.loc[table['sid'].duplicated(), 'sid'].iloc[0]!r}")
    values = table[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("features must be finite numbers")
    blob = json.dumps(meta, sort_keys=True)
    if path.suffix == ".parquet":
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), META_KEY: blob.encode()})
        return atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))
    if path.suffix == ".csv":
        atomic_write_text(path.with_name(path.name + ".json"), blob)
        return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    raise ValueError(f"features table must end in .parquet or .csv, got {path.name}")


def features_table_path(path_or_run_dir: str | Path) -> Path:
    """A table path as given, or ``RUN/features.parquet`` for a run folder."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        table = path / FEATURES_FILE
        if not table.is_file():
            raise UserError(f"{path}: no {FEATURES_FILE} in this run folder "
                            f"(run `copd-ifm extract --run {path}` first)")
        return table
    if not path.is_file():
        raise UserError(f"features not found: {path} (give a run folder or a .parquet/.csv features table)")
    if path.suffix not in {".parquet", ".csv"}:
        raise UserError(f"{path}: features table must be .parquet or .csv")
    return path


def read_features_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a features table (``{}`` when it has none)."""
    if path.suffix == ".parquet":
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    else:
        sidecar = path.with_name(path.name + ".json")
        raw = sidecar.read_bytes() if sidecar.is_file() else None
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: metadata is not valid JSON ({exc.msg}); rewrite the table with extract") from exc
    return meta if isinstance(meta, dict) else {}


def read_feature_sets(path_or_run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read a features table → ``{method name: frame}``.

    Each frame is indexed by ``sid`` (text) with float columns ``f0 … f{D−1}``
    in index order (``[n_subjects, D]``); ``frame.attrs`` holds ``meta`` (the
    table's metadata), ``path`` and ``set``. Rows with a missing value in a set
    are dropped from that set (the evaluation counts them as missing).
    """
    path = features_table_path(path_or_run_dir)
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"sid": str})
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read features table ({exc})") from exc
    if "sid" not in table.columns:
        raise UserError(f"{path}: no 'sid' column (a features table has sid plus f0..f<D-1>)")
    table["sid"] = table["sid"].astype(str)
    if table["sid"].duplicated().any():
        raise UserError(f"{path}: sid {table.loc[table['sid'].duplicated(), 'sid'].iloc[0]!r} appears twice "
                        f"(one row per subject)")
    table = table.set_index("sid")
    meta = read_features_meta(path)
    run = str(meta.get("run") or (path.parent.name if path.name == FEATURES_FILE else path.stem))
    sets: dict[str, pd.DataFrame] = {}
    for name, columns in _feature_sets(list(map(str, table.columns)), path).items():
        try:
            frame = table[columns].astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: feature columns must be numbers ({exc})") from exc
        frame = frame.set_axis([f"f{i}" for i in range(len(columns))], axis=1)
        frame = frame[np.isfinite(frame).all(axis=1)]
        frame.attrs.update(meta=meta, path=str(path), set=name)
        sets[f"{run}/{name}" if name else run] = frame
    return sets
