"""Patch stores that can be trusted: input identity, one manifest per store, safe graph files, a full
disk, stale temp files, one preprocess at a time, workers that die with their parent, empty manifests."""
from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from copd_ifm import files
from copd_ifm.cli import main
from copd_ifm.cohort.config import resolve_cohort
from copd_ifm.cohort.synthetic import generate_cohort
from copd_ifm.ct import store as st
from copd_ifm.ct.graph import landmark_graph
from copd_ifm.errors import UserError

SMALL = ["--set", "spacing_mm=4", "--set", "patch_size=8", "--set", "landmark_step_mm=40",
         "--set", "registration.downsample_mm=8", "--set", "registration.shrink_factors=[2,1]",
         "--set", "registration.smoothing_sigmas_mm=[4,0]", "--workers", "1"]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> Path:
    """Two 3-subject synthetic cohorts whose manifests sit in folders of the same name: A/data, B/data."""
    root = tmp_path_factory.mktemp("ab")
    for name, seed in (("A", 1), ("B", 2)):
        generate_cohort(root / name / "data", n=3, seed=seed, spacing_mm=4.0, workers=1)
    return root


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COPD_IFM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _preprocess(manifest: Path, *extra: str) -> int:
    return main(["preprocess", "--cohort", str(manifest), *SMALL, *extra])


def _records(store: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((store / "records").glob("*.json"))}


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines printed to stderr (the progress bar also writes there)."""
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.slow
def test_two_cohorts_in_same_named_folders_get_their_own_stores(cohorts, home, capsys, caplog):
    """The issue's A/B scenario: B used to get A's patches ("0 done now, 3 already done")."""
    caplog.set_level(logging.INFO, logger="copd_ifm")
    a, b = cohorts / "A" / "data" / "manifest.csv", cohorts / "B" / "data" / "manifest.csv"
    store_a, store_b = resolve_cohort(str(a)).store_path, resolve_cohort(str(b)).store_path
    assert store_a != store_b and store_a.parent == store_b.parent == home / "stores"
    assert _preprocess(a) == 0
    caplog.clear()
    assert _preprocess(b) == 0
    assert "3 done now, 0 already done" in caplog.text
    for store, cohort in ((store_a, "A"), (store_b, "B")):
        for sid, record in _records(store).items():
            image = cohorts / cohort / "data" / "images" / f"{sid}.nii.gz"
            assert record["inputs"]["image"] == {"path": str(image.resolve()), "size": image.stat().st_size,
                                                 "mtime_ns": image.stat().st_mtime_ns,
                                                 "sha1": files.file_sha1(image)}

    # B into A's store: refused in one line naming both manifests, nothing written
    before = {sid: r["sha1"] for sid, r in _records(store_a).items()}
    capsys.readouterr()
    assert _preprocess(b, "--out", str(store_a)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and str(a.resolve()) in err[0] and str(b.resolve()) in err[0] and "--force" in err[0]
    assert {sid: r["sha1"] for sid, r in _records(store_a).items()} == before

    # --force: every subject of B is processed again from B's files, and the store now follows B
    caplog.clear()
    assert _preprocess(b, "--out", str(store_a), "--force") == 0
    assert "3 done now, 0 already done" in caplog.text
    assert all(r["inputs"]["image"]["path"].startswith(str(b.parent.resolve())) for r in _records(store_a).values())
    assert st.PatchStore(store_a).config["manifest"] == str(b.resolve())


def test_replaced_image_is_processed_again_touched_one_is_not(cohorts, tmp_path, home, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="copd_ifm")
    cohort = tmp_path / "C"
    shutil.copytree(cohorts / "A" / "data", cohort)
    manifest = cohort / "manifest.csv"
    store = resolve_cohort(str(manifest)).store_path
    assert _preprocess(manifest) == 0
    first = _records(store)

    replaced = cohort / "images" / "SYN0001.nii.gz"
    for kind in ("images", "masks"):                                  # same paths, another subject's files
        shutil.copy(cohorts / "B" / "data" / kind / "SYN0001.nii.gz", cohort / kind / "SYN0001.nii.gz")
    touched = cohort / "images" / "SYN0002.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))   # same bytes
    caplog.clear()
    assert _preprocess(manifest) == 0
    assert "1 done now, 2 already done" in caplog.text
    second = _records(store)
    assert second["SYN0001"]["inputs"]["image"]["sha1"] == files.file_sha1(replaced) != \
        first["SYN0001"]["inputs"]["image"]["sha1"]
    assert second["SYN0001"]["sha1"] != first["SYN0001"]["sha1"]                    # new patches
    assert second["SYN0002"] == first["SYN0002"] and second["SYN0003"] == first["SYN0003"]

    # unchanged size and mtime: trusted without reading the file
    monkeypatch.setattr(st, "_content_sha1", lambda path: pytest.fail(f"{path} was hashed"))
    assert st.same_input(second["SYN0003"]["inputs"]["image"], cohort / "images" / "SYN0003.nii.gz")
    # a settings change is a different store (refused), so compare the per-record hash directly
    image, mask = cohort / "images" / "SYN0003.nii.gz", cohort / "masks" / "SYN0003.nii.gz"
    assert st.is_done(store, "SYN0003", image, mask, second["SYN0003"]["settings_hash"]) == second["SYN0003"]
    assert st.is_done(store, "SYN0003", image, mask, "another-settings-hash") is None
    assert st.is_done(store, "SYN0003", image, None, second["SYN0003"]["settings_hash"]) is None   # mask dropped


def test_graph_is_plain_tensors_and_a_crafted_pickle_runs_nothing(tmp_path):
    corners = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [8, 8, 8]])
    graph = landmark_graph(corners, step=4)
    files.save_torch(tmp_path / "graph.pt", st.graph_tensors(graph))
    back = st.load_graph(tmp_path / "graph.pt")
    for key in ("x", "pos", "edge_index"):
        assert torch.equal(getattr(back, key), getattr(graph, key))
    assert back.num_nodes == 4

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "crafted.pt")
    with pytest.raises(UserError) as info:
        st.load_graph(tmp_path / "crafted.pt")
    assert "crafted.pt" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    torch.save(graph, tmp_path / "pickled.pt")                        # an older store's pickled Data object
    with pytest.raises(UserError, match="not a plain-tensor graph file"):
        st.load_graph(tmp_path / "pickled.pt")


def test_old_pickled_graph_is_rewritten_by_preprocess(cohorts, home):
    manifest = cohorts / "A" / "data" / "manifest.csv"
    store = resolve_cohort(str(manifest)).store_path
    assert _preprocess(manifest) == 0
    data = st.load_graph(store / st.GRAPH)
    torch.save(data, store / st.GRAPH)
    assert _preprocess(manifest) == 0
    assert torch.equal(st.PatchStore(store).graph.edge_index, data.edge_index)


def test_full_disk_stops_preprocess_cleanly(cohorts, tmp_path, home, capsys):
    """ENOSPC while writing patches: one line, exit 2, no temp file, no subject recorded as failed."""
    manifest = cohorts / "A" / "data" / "manifest.csv"
    store = tmp_path / "store"
    real = pathlib.Path.write_bytes

    def full(self: pathlib.Path, data: bytes) -> int:
        if self.parent.name == "patches":
            real(self, data[: len(data) // 2])                      # part written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    pathlib.Path.write_bytes = full  # type: ignore[method-assign]
    try:
        rc = _preprocess(manifest, "--out", str(store))
    finally:
        pathlib.Path.write_bytes = real  # type: ignore[method-assign]
    err = _errors(capsys)
    assert rc == 2 and len(err) == 1 and "disk full" in err[0] and str(store / "patches") in err[0]
    assert not [p for p in store.rglob(".*.tmp*")]
    assert not list((store / "records").glob("*.json"))              # stopped at the first subject
    assert _preprocess(manifest, "--out", str(store)) == 0             # space freed: the re-run completes
    assert len(st.PatchStore(store).sids) == 3


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_are_swept_and_a_second_preprocess_is_refused(cohorts, tmp_path, home, capsys):
    manifest = cohorts / "A" / "data" / "manifest.csv"
    store = tmp_path / "store"
    stale = store / "patches" / f".SYN0001.tmp{_dead_pid()}.npy"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    assert _preprocess(manifest, "--out", str(store)) == 0
    assert not stale.exists()

    capsys.readouterr()
    with files.file_lock(store / ".preprocess.lock", "preprocess (shard 0/1)"):
        assert _preprocess(manifest, "--out", str(store)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and f"in use by PID {os.getpid()}" in err[0]


def _state(pid: int) -> str:
    """Process state letter from /proc (Z: zombie, i.e. dead), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_preprocess_is_killed(tmp_path):
    script = f"""
import os, sys, time
import numpy as np
from copd_ifm.cohort.config import RegistrationConfig
from copd_ifm.ct.preprocess import _pool
from copd_ifm.ct.subject import Settings
settings = Settings({str(tmp_path)!r}, 4.0, 8, "auto", 0.5, RegistrationConfig(), (1.0,) * 9, np.zeros((1, 3)))
pool = _pool(1, settings)
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(120)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    worker = 0
    try:
        worker = int(parent.stdout.readline())
        assert _state(worker) not in ("gone", "Z")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while _state(worker) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _state(worker) in ("gone", "Z")
    finally:
        parent.kill()
        if worker and _state(worker) not in ("gone", "Z"):           # the watchdog failed: do not leak it
            os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize("stage", ["preprocess", "pretrain", "evaluate"])
def test_empty_manifest_is_one_line(stage, tmp_path, home, capsys):
    manifest = tmp_path / "empty" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_bytes(b"")
    extra = {"preprocess": [], "pretrain": ["--out", str(tmp_path / "run")],
             "evaluate": ["--features", str(tmp_path / "run"), "--out", str(tmp_path / "report")]}[stage]
    assert main([stage, "--cohort", str(manifest), *extra]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and str(manifest) in err[0] and "manifest is empty" in err[0] and "sid,image" in err[0]
