"""The patch store: the on-disk contract between preprocessing and training.

Layout of a store folder::

    config.yaml          resolved CohortConfig that built it
    landmarks.csv        landmark, i, j, k (atlas corner, voxels at the cohort spacing),
                         x_mm, y_mm, z_mm (corner position), nx, ny, nz (normalised coords)
    landmarks.npy        [L, 3] int64 atlas corners (i, j, k)
    graph.pt             plain tensors (torch.save of a dict, read with weights_only=True):
                         x [L, 3] float32, pos [L, 3] float32, edge_index [2, E] int64
    index.csv            one row per processed subject (INDEX_COLUMNS), merged from records/
    failures.csv         sid, reason (one line), code (reason code) of every failed subject
    patches/<sid>.npy    [L, P, P, P] int16 HU clipped to [-1024, 240], axes (z, y, x)
    centers/<sid>.npy    [L, 3] float32 mapped corners, continuous (x, y, z) subject voxel indices
                         on the isotropic grid; patch l starts at their rounding
    outside/<sid>.npy    [L] float32 share of each patch's voxels outside the subject grid (they read
                         -1024 HU); subjects with too many patches half outside fail (copd_ifm.ct.fov)
    records/<sid>.json   one subject's index row (each written by exactly one process) plus
                         ``inputs`` (identity of its image and mask files, see
                         :func:`input_identity`) and ``settings_hash``;
                         records/<sid>.running marks a subject in a pool worker
    qc/<sid>.png         previews for a sample of subjects

Every file is written to a temporary name and renamed. Shard processes
never write the same per-subject file; the shared files (config, landmarks,
graph, ``index.csv``, ``failures.csv``) are written under a file lock
(``.lock``), and ``index.csv`` is rebuilt from ``records/`` at the end of each
run, so the last run to finish sees every record.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from copd_ifm.files import atomic_write_text, file_lock, file_sha1
from copd_ifm.errors import UserError

if TYPE_CHECKING:
    import torch

CONFIG = "config.yaml"
LANDMARKS_CSV = "landmarks.csv"
LANDMARKS_NPY = "landmarks.npy"
GRAPH = "graph.pt"
INDEX = "index.csv"
FAILURES = "failures.csv"
PATCHES, CENTERS, OUTSIDE, RECORDS, QC = "patches", "centers", "outside", "records", "qc"

#: The DICOM series a subject was read from (empty for image files), see copd_ifm.ct.dicom.SeriesRead.record.
SERIES_COLUMNS = ("series_uid", "series_description", "series_kernel", "series_slices", "slice_thickness_mm",
                  "slice_step_mm", "transfer_syntax")
#: Per-subject timing columns (seconds), in pipeline order.
STAGES = ("read", "mask", "register", "patches", "densitometry", "write", "qc")
INDEX_COLUMNS = (["sid", "status", "n_patches", "sha1", "laa950_pct", "perc15_hu", "lung_volume_l", "lung_mean_hu",
                  "mask_source", "dice", "scale", "n_partial", "seconds", "cpu_s"]
                 + [f"{s}_s" for s in STAGES] + ["image", "error"]
                 + ["reason_code", "lung_edge_fraction", "landmarks_outside"] + list(SERIES_COLUMNS))
TEXT_COLUMNS = ("sid", "status", "sha1", "mask_source", "image", "error", "reason_code", "series_uid",
                "series_description", "series_kernel", "transfer_syntax")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a table atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def record_path(store: Path, sid: str) -> Path:
    return Path(store) / RECORDS / f"{sid}.json"


def running_path(store: Path, sid: str) -> Path:
    """Marker of a subject being processed by a pool worker (left behind if the worker dies)."""
    return Path(store) / RECORDS / f"{sid}.running"


def write_record(store: Path, record: dict[str, Any]) -> None:
    """Write one subject's index row (``records/<sid>.json``) atomically."""
    atomic_write_text(record_path(store, record["sid"]), json.dumps(record, indent=1))


def read_record(store: Path, sid: str) -> dict[str, Any] | None:
    """One subject's record, or None if absent or unreadable."""
    try:
        return json.loads(record_path(store, sid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stat(path: Path) -> tuple[str, int, int]:
    """(resolved path, bytes, newest mtime in ns) of a file, or summed/newest over a folder's files (DICOM)."""
    path = Path(path).resolve()
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.rglob("*")) if p.is_file()]
        return str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _content_sha1(path: Path) -> str:
    """SHA-1 of a file's bytes, or of a folder's relative names and bytes in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return file_sha1(path)
    digest = hashlib.sha1()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + file_sha1(item).encode())
    return digest.hexdigest()


def input_identity(path: Path | None) -> dict[str, Any] | None:
    """``{path, size, mtime_ns, sha1}`` of an input image or mask (file or DICOM folder); None when absent."""
    if path is None or not Path(path).exists():
        return None
    resolved, size, mtime_ns = _stat(path)
    return {"path": resolved, "size": size, "mtime_ns": mtime_ns, "sha1": _content_sha1(path)}


def same_input(recorded: dict[str, Any] | None, path: Path | None) -> bool:
    """Whether ``path`` is still the input ``recorded`` by :func:`input_identity`.

    The resolved path must be the same. Same size and mtime are trusted
    without reading the file; otherwise the content hash decides (a file
    copied back or touched is still the same input, a replaced one is not).
    """
    if path is None or recorded is None or not Path(path).exists():
        return path is None and recorded is None
    resolved, size, mtime_ns = _stat(path)
    if resolved != recorded.get("path"):
        return False
    if (size, mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
        return True
    return size == recorded.get("size") and _content_sha1(path) == recorded.get("sha1")


def settings_hash(settings: dict[str, Any]) -> str:
    """Short hash of the preprocessing settings that decide a store's content (JSON, sorted keys)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(store: Path, sid: str, image: Path | None = None, mask: Path | None = None,
            settings: str = "", series_uid: str = "") -> dict[str, Any] | None:
    """The record of ``sid`` if it is ``ok``, was made from these ``image`` and ``mask`` files (see
    :func:`same_input`) with these ``settings`` (:func:`settings_hash`) and this manifest ``series_uid``,
    and its patch file and centres exist with the patch checksum matching; else None (the subject is
    processed again)."""
    record = read_record(store, sid)
    if not record or record.get("status") != "ok" or record.get("settings_hash") != settings:
        return None
    if record.get("series_requested", "") != series_uid:
        return None
    inputs = record.get("inputs") or {}
    try:
        if not (same_input(inputs.get("image"), image) and same_input(inputs.get("mask"), mask)):
            return None
    except OSError:            # unreadable now: processing it again gives the subject its one-line reason
        return None
    patch = Path(store) / PATCHES / f"{sid}.npy"
    if not (patch.is_file() and (Path(store) / CENTERS / f"{sid}.npy").is_file()):
        return None
    return record if file_sha1(patch) == record.get("sha1") else None


@contextmanager
def locked(store: Path) -> Iterator[None]:
    """Exclusive lock on the store's shared files (``.lock``), across processes."""
    with file_lock(Path(store) / ".lock", "the patch store's shared files"):
        yield


def merge_records(store: Path, sids: list[str]) -> pd.DataFrame:
    """Rebuild ``index.csv`` and ``failures.csv`` from the records of ``sids`` (in that order).

    Subjects without a record yet (e.g. still running in another shard) are
    left out. Runs under :func:`locked`, so concurrent shard processes merge
    one after another and the last one sees every record.
    """
    store = Path(store)
    with locked(store):
        rows = [r for r in (read_record(store, sid) for sid in sids) if r is not None]
        index = pd.DataFrame(rows).reindex(columns=INDEX_COLUMNS) if rows else pd.DataFrame(columns=INDEX_COLUMNS)
        index["error"] = index["error"].fillna("")
        write_csv(store / INDEX, index)
        failed = index[index["status"] != "ok"]
        write_csv(store / FAILURES, pd.DataFrame({"sid": failed["sid"], "reason": failed["error"],
                                                  "code": failed["reason_code"].fillna("")}))
    return index


def read_index(path: Path) -> pd.DataFrame:
    """``index.csv`` with text columns as str (empty when missing; a sid like "0012" or "NA" stays
    as written) and the other columns numeric (NaN when missing)."""
    index = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in index.columns:
        if column not in TEXT_COLUMNS:
            index[column] = pd.to_numeric(index[column].replace("", np.nan))
    return index


GRAPH_KEYS = ("x", "pos", "edge_index")


def graph_tensors(graph: Any) -> dict[str, Any]:
    """A landmark graph → the plain tensors ``graph.pt`` stores (``GRAPH_KEYS``)."""
    return {key: getattr(graph, key) for key in GRAPH_KEYS}


def load_graph(path: Path):
    """``graph.pt`` → ``torch_geometric.data.Data`` (x [L, 3], pos [L, 3], edge_index [2, E]).

    Read with ``weights_only=True``: a file holding anything but tensors (an
    old pickled graph, or a crafted pickle) is a UserError and runs no code.
    """
    import pickle

    import torch
    from torch_geometric.data import Data

    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise UserError(f"{path}: not a plain-tensor graph file ({reason}); delete it and run "
                        "`copd-ifm preprocess` again to rewrite it") from None
    if not (isinstance(tensors, dict) and all(isinstance(tensors.get(k), torch.Tensor) for k in GRAPH_KEYS)):
        raise UserError(f"{path}: expected tensors {', '.join(GRAPH_KEYS)}; delete it and run "
                        "`copd-ifm preprocess` again to rewrite it")
    return Data(**{k: tensors[k] for k in GRAPH_KEYS}, num_nodes=len(tensors["x"]))


def to_network(x: Any) -> Any:
    """Stored HU → network input ``(HU + 1024) / 632 - 1`` ∈ [-1, 1], float32 (numpy array or torch tensor)."""
    if hasattr(x, "float") and hasattr(x, "dim"):                    # torch.Tensor, without importing torch
        return (x.float() + 1024.0) / 632.0 - 1.0
    return ((np.asarray(x, dtype=np.float32) + 1024.0) / 632.0 - 1.0).astype(np.float32)


def _map_limit() -> int:
    """Maps kept per process: 1024, or half the open-file limit where that is lower."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 1024
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 2))


class OpenMaps:
    """Memory maps of ``.npy`` files, each opened once per process and reused (the header parse and ``mmap``
    cost more than reading a 32³ patch). Each map holds a file descriptor, so past ``limit`` the least
    recently used is closed. Read-only shared maps stay valid in forked loader workers; pickling (spawned
    workers) carries no map, each process opens its own."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or _map_limit()
        self._maps: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        found = self._maps.pop(path, None)
        self._maps[path] = np.load(path, mmap_mode="r") if found is None else found
        if len(self._maps) > self.limit:
            self._maps.popitem(last=False)
        return self._maps[path]

    def __getstate__(self) -> dict[str, int]:
        return {"limit": self.limit}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["limit"])


class PatchStore:
    """Read a patch store folder (layout in the module docstring).

    Patches are memory-mapped, so memory does not grow with the cohort.
    Raises UserError if the folder holds no store or no successfully
    preprocessed subject.
    """

    to_network = staticmethod(to_network)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        missing = [n for n in (CONFIG, LANDMARKS_NPY, LANDMARKS_CSV, GRAPH, INDEX) if not (self.path / n).is_file()]
        if missing:
            raise UserError(f"no patch store at {self.path} ({missing[0]} missing); "
                            "run `copd-ifm preprocess --cohort ...` first")
        self.index = read_index(self.path / INDEX)
        ok = self.index[self.index["status"] == "ok"]
        if ok.empty:
            raise UserError(f"patch store {self.path} has no successfully preprocessed subject "
                            f"({len(self.index)} failed, see {self.path / FAILURES}); "
                            "fix them and run `copd-ifm preprocess --cohort ...` again")
        self.sids: list[str] = sorted(ok["sid"])
        self._ok = set(self.sids)
        self._patch_maps = OpenMaps()

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved cohort config the store was built with (plain mapping)."""
        return yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8"))

    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])

    @cached_property
    def landmarks(self) -> np.ndarray:
        """[L, 3] int64 atlas corner indices (i, j, k)."""
        return np.load(self.path / LANDMARKS_NPY)

    @property
    def n_landmarks(self) -> int:
        return len(self.landmarks)

    @cached_property
    def landmark_table(self) -> pd.DataFrame:
        return pd.read_csv(self.path / LANDMARKS_CSV)

    @cached_property
    def landmark_coords(self) -> np.ndarray:
        """[L, 3] float32 normalised atlas coordinates (corner / column max)."""
        return self.landmark_table[["nx", "ny", "nz"]].to_numpy(np.float32)

    @cached_property
    def graph(self):
        """The landmark graph (``torch_geometric.data.Data``), see :func:`load_graph`."""
        return load_graph(self.path / GRAPH)

    @property
    def failures(self) -> pd.DataFrame:
        """``sid, reason, code`` of the failed subjects."""
        failed = self.index[self.index["status"] != "ok"]
        codes = failed["reason_code"] if "reason_code" in failed else ""
        return pd.DataFrame({"sid": failed["sid"], "reason": failed["error"], "code": codes}).reset_index(drop=True)

    def densitometry(self) -> pd.DataFrame:
        """``sid, laa950_pct, perc15_hu, lung_volume_l`` of the ok subjects, sorted by sid."""
        ok = self.index[self.index["status"] == "ok"]
        return ok[["sid", "laa950_pct", "perc15_hu", "lung_volume_l"]].sort_values("sid").reset_index(drop=True)

    def _file(self, folder: str, sid: str) -> Path:
        if sid not in self._ok:
            raise KeyError(f"{sid!r} is not a successfully preprocessed subject of {self.path}")
        return self.path / folder / f"{sid}.npy"

    def patches(self, sid: str) -> np.ndarray:
        """Memory-mapped [L, P, P, P] int16 HU patches of ``sid`` (axes z, y, x), read-only; the map is reused."""
        return self._patch_maps.get(self._file(PATCHES, sid))

    def centers(self, sid: str) -> np.ndarray:
        """[L, 3] float32 mapped corners of ``sid`` (continuous x, y, z voxel indices)."""
        return np.load(self._file(CENTERS, sid))

    def outside(self, sid: str) -> np.ndarray:
        """[L] float32 share of each patch of ``sid`` outside its image (those voxels read -1024 HU)."""
        return np.load(self._file(OUTSIDE, sid))

    def subject_graph(self, sid: str) -> torch.Tensor:
        """The anchor's overlap graph of ``sid`` from its mapped corners: ``edge_index`` ``[2, E]`` with self loops."""
        from copd_ifm.ct.graph import overlap_graph

        return overlap_graph(self.centers(sid), self.patch_size)

    def __len__(self) -> int:
        return len(self.sids)

    def __repr__(self) -> str:
        return (f"PatchStore({str(self.path)!r}: {len(self.sids)} subjects, {self.n_landmarks} landmarks, "
                f"P={self.patch_size})")
