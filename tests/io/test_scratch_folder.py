"""Where a CompareWarp scratch store goes when no ``coaddx.scratch-dir`` is set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from coaddx.io.zarr import scratch_planes as sp


def test_default_folder_is_shm_with_room(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "SHM", tmp_path)
    assert sp.default_folder(1 << 20) == tmp_path
    assert sp.ScratchPlanes((2, 8, 8), (4, 4)).path.parent == tmp_path


def test_default_folder_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "SHM", tmp_path)
    assert sp.default_folder(1 << 62) == Path(tempfile.gettempdir())  # no room
    monkeypatch.setattr(sp, "SHM", tmp_path / "absent")
    assert sp.default_folder(1) == Path(tempfile.gettempdir())


def test_default_folder_leaves_tmpfs_when_the_planes_are_large_beside_memory(tmp_path, monkeypatch):
    """tmpfs is memory no worker budget counts: a store over an eighth of the available
    memory (or a quarter of the free tmpfs) goes to the temporary folder."""
    import psutil

    monkeypatch.setattr(sp, "SHM", tmp_path)
    avail = psutil.virtual_memory().available
    free = sp.os.statvfs(tmp_path).f_bavail * sp.os.statvfs(tmp_path).f_frsize
    small = min(avail // 16, free // 8)
    assert sp.default_folder(small) == tmp_path
    assert sp.default_folder(avail // 4) == Path(tempfile.gettempdir())
    monkeypatch.setattr(sp, "SHM_FRACTION_OF_MEMORY", 0.0)
    assert sp.default_folder(1) == Path(tempfile.gettempdir())
    assert sp.default_folder(1) == Path(tempfile.gettempdir())


def test_a_named_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "SHM", tmp_path / "shm")
    assert sp.ScratchPlanes((2, 8, 8), (4, 4), tmp_path).path.parent == tmp_path
