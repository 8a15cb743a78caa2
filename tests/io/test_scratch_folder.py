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


def test_a_named_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "SHM", tmp_path / "shm")
    assert sp.ScratchPlanes((2, 8, 8), (4, 4), tmp_path).path.parent == tmp_path
