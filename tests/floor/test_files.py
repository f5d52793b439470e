"""The floor's file helpers: atomic writes, full disks, temp sweeps and locks."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from copd_ifm import files
from copd_ifm.errors import UserError


def test_temp_name_keeps_the_suffixes_readers_infer_formats_from():
    assert files.temp_path(Path("a/b.nii.gz")).name.endswith(".nii.gz")
    assert files.temp_path(Path("a/plot.png")).name.startswith(".plot.tmp") and files.temp_path(Path("x.png")).suffix == ".png"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "table.csv"
    files.atomic_write_text(target, "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"table.csv: disk full while writing \(needs more than the 0.0 MiB written"):
        files.atomic_write(target, half_then_fail)
    assert target.read_text(encoding="utf-8") == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_full_disk_names_the_space_a_known_size_needs(tmp_path, monkeypatch):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(UserError, match=r"needs 3.0 MiB"):
        files.atomic_write_bytes(tmp_path / "p.npy", b"\0" * (3 * 2**20))
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_temps_of_dead_writers_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "sub" / f".x.npy.tmp{int(dead.stdout)}"
    live = tmp_path / f".y.npy.tmp{__import__('os').getpid()}"
    stale.parent.mkdir()
    stale.write_bytes(b"1")
    live.write_bytes(b"2")
    keep = tmp_path / "z.npy"
    keep.write_bytes(b"3")
    assert files.sweep_temps(tmp_path) == 1
    assert not stale.exists() and live.exists() and keep.exists()


def test_a_held_lock_names_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from copd_ifm.files import file_lock\n"
                               f"with file_lock({str(tmp_path / 'lock')!r}, 'the store'):\n"
                               "    print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"the store is in use by PID {holder.pid}"):
            with files.file_lock(tmp_path / "lock", "the store", timeout=0):
                pass
    finally:
        holder.kill()
        holder.wait()
    with files.file_lock(tmp_path / "lock", "the store", timeout=0):
        pass
