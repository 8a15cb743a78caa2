"""Visits written but not committed: what a driver killed mid-run leaves, and how the next
run keeps them.

``make_warps`` commits its visits once every task has ended (they are committed in slot
order, and the commit log is the driver's to write). So that a driver killed in the middle
does not lose the visits whose tasks had finished, each task saves its visit's record, with
the CRC-32C of every chunk it wrote, as ``<group>/written/<slot>.json`` as soon as its chunks
are written (written to a temporary name and renamed, so it is whole or absent). The next
``make_warps(reuse=True)`` finds the pending slots of the interrupted run, checks every
chunk of each against its saved CRC, and commits the visits that are whole without warping
them again; the others are redone. Readers never see a visit before it is committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coaddx.io.zarr.layout import LAYERS, jsonable
from coaddx.io.zarr.manifest import chunk_crc, inside_root
from coaddx.io.zarr.psf_products import PSF_KEY

__all__ = ["WRITTEN", "clear_written", "save_written", "written_records"]

WRITTEN = "written"
_CHUNKS = "chunks"


def save_written(root: str | os.PathLike[str], warp_type: str, slot: int, record: dict) -> None:
    """Save the record of a slot whose chunks are all written (called by the task)."""
    folder = inside_root(root, Path(root) / warp_type / WRITTEN)
    folder.mkdir(exist_ok=True)
    body = {
        "slot": int(slot),
        "record": {
            **jsonable({k: v for k, v in record.items() if k != _CHUNKS}),
            _CHUNKS: record.get(_CHUNKS),
        },
    }
    tmp = folder / f".{slot}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, folder / f"{int(slot)}.json")


def _whole(group: Path, slot: int, crcs: Mapping[str, Any] | None) -> bool:
    """Every chunk of the slot is as its CRCs say (None: a fill chunk that must be absent)."""
    if not crcs or set(crcs) != set(LAYERS):
        return False
    for name, rows in crcs.items():
        for j, row in enumerate(rows):
            for i, crc in enumerate(row):
                path = group / name / "c" / str(slot) / str(j) / str(i)
                if crc is None:
                    if path.exists():
                        return False
                    continue
                try:
                    if path.is_symlink() or chunk_crc(path.read_bytes()) != int(crc):
                        return False
                except OSError:
                    return False
    return True


def _psf_whole(group: Path, record: Mapping[str, Any]) -> bool:
    """The visit's PSF products file, if its record names one, is as its CRC says."""
    entry = record.get(PSF_KEY)
    if entry is None:
        return True
    try:
        path = group / str(entry["file"])
        return not path.is_symlink() and chunk_crc(path.read_bytes()) == int(entry["crc32c"])
    except (OSError, KeyError, TypeError, ValueError):
        return False


def written_records(
    root: str | os.PathLike[str], warp_type: str, pending: Mapping[int, int]
) -> dict[int, tuple[int, dict[str, Any]]]:
    """visit -> (slot, record) of the ``pending`` visits (visit -> slot) whose saved record
    matches and whose chunks are all whole."""
    group = Path(root) / warp_type
    folder = group / WRITTEN
    out: dict[int, tuple[int, dict[str, Any]]] = {}
    if not folder.is_dir():
        return out
    for visit, slot in pending.items():
        path = folder / f"{int(slot)}.json"
        try:
            body = json.loads(path.read_text())
            record = dict(body["record"])
            same = int(body["slot"]) == int(slot) and int(record["visit"]) == int(visit)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same and _whole(group, int(slot), record.get(_CHUNKS)) and _psf_whole(group, record):
            out[int(visit)] = (int(slot), record)
    return out


def clear_written(root: str | os.PathLike[str], warp_type: str) -> None:
    """Remove the saved records (after their visits are committed or their slots reused)."""
    folder = inside_root(root, Path(root) / warp_type / WRITTEN)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
