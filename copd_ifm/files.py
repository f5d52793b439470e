"""Files on disk, safely: atomic writes, cross-process locks, temp-file sweeps, ``{data_home}``, packaged data.

Part of the floor: imports nothing of the project but :mod:`copd_ifm.errors`.

Every output the toolkit writes goes through :func:`atomic_write`: the data is
written to a hidden temporary file beside the target (same suffix, so writers
that infer the format from the name still work), then renamed into place. A
reader never sees half a file; a crash leaves only ``.NAME.tmpPID`` files, which
:func:`sweep_temps` removes. A full disk becomes a one-line :class:`UserError`
that names the path, and the temporary file is removed.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.resources
import io
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from copd_ifm.errors import UserError

#: Hidden temporary name of an atomic write: ``.NAME.tmpPID`` plus the target's suffixes.
_TEMP_RE = re.compile(r"^\..+\.tmp(\d+)(\.[A-Za-z0-9.]+)?$")


def data_home() -> Path:
    """Folder for generated cohorts, stores and datasets (``$COPD_IFM_HOME``, default ``~/.cache/copd-ifm``)."""
    return Path(os.environ.get("COPD_IFM_HOME", Path.home() / ".cache" / "copd-ifm")).expanduser()


def package_path(package: str, *parts: str) -> Path:
    """A data file or folder shipped inside ``package`` (found through :mod:`importlib.resources`, so an
    editable checkout and an installed wheel resolve alike)."""
    path = importlib.resources.files(package).joinpath(*parts)
    if not isinstance(path, Path):
        raise UserError(f"{package} is installed as a zip archive, so {'/'.join(parts)} has no file path; "
                        f"install the wheel unpacked (pip install)")
    return path


def expand_home(text: str) -> Path:
    """``"{data_home}/vision"`` → an absolute-or-relative path with ``{data_home}`` and ``~`` expanded."""
    return Path(text.replace("{data_home}", str(data_home()))).expanduser()


def temp_path(path: Path) -> Path:
    """The temporary sibling of ``path`` used by :func:`atomic_write` (keeps ``.nii.gz``, ``.png`` …)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp{os.getpid()}{suffix}")


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def atomic_write(path: str | Path, write: Callable[[Path], Any], size: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    On any failure the temporary file is removed; ENOSPC (disk full) becomes a
    :class:`UserError` naming the file, the space it needs (``size`` bytes when
    known, else at least what was written) and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _is_disk_full(exc):
            need = f"needs {size / 2**20:.1f} MiB" if size else f"needs more than the {written / 2**20:.1f} MiB written"
            raise UserError(f"{path}: disk full while writing ({need}, {_free_space(path.parent)}); free space on "
                            f"that disk or choose another output folder, then re-run (finished work is kept)") from exc
        raise
    return path


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a full disk as a RuntimeError from its zip writer.
    return isinstance(exc, RuntimeError) and ("No space left" in str(exc) or "unexpected pos" in str(exc))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), size=len(text.encode("utf-8")))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` atomically (load it back with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_npy(path: str | Path, array: Any) -> str:
    """Save a NumPy array as ``.npy`` atomically; returns the SHA-1 of the file's bytes."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha1(data).hexdigest()


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib ``Figure`` as PNG atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes (read in 8 MiB blocks)."""
    return file_digest(path, "sha1")


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file's bytes with a :mod:`hashlib` ``algorithm`` (read in 8 MiB blocks)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_temps(folder: str | Path, recursive: bool = True) -> int:
    """Remove temporary files of atomic writes whose writing process is gone; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        match = _TEMP_RE.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def file_lock(path: str | Path, what: str, timeout: float = -1) -> Iterator[None]:
    """Exclusive cross-process lock on ``path`` (``filelock``; POSIX and Windows).

    ``timeout`` < 0 waits for ever; otherwise a held lock after ``timeout``
    seconds is a :class:`UserError` saying who holds it (PID written beside the lock).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_name(path.name + ".owner")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        holder = owner.read_text(encoding="utf-8").strip() if owner.is_file() else "another process"
        raise UserError(f"{path.parent}: {what} is in use by {holder}; wait for it to finish "
                        f"(or stop it) and run again") from None
    try:
        owner.write_text(f"PID {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this host'}",
                         encoding="utf-8")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
