"""Writing HealSparse property maps (issue 16): each map as a HealSparse FITS file, atomically.

The maps come from :func:`coaddx.coadd.property_maps.property_maps`; this module only writes
them (``HealSparseMap.write`` to a hidden temporary name beside the target, then
``os.replace``), so a reader never sees a half-written map and a failed write leaves the old
file in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coaddx.errors import InputError

__all__ = ["write_property_maps"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def write_property_maps(
    maps: Mapping[str, Any], folder: str | os.PathLike[str], *, overwrite: bool = True
) -> dict[str, Path]:
    """Write each map of ``maps`` as ``folder/<name>.fits`` (HealSparse FITS, read back with
    ``healsparse.HealSparseMap.read``); returns the paths by name. ``folder`` is created."""
    for name in maps:
        if not _NAME.match(name) or name.startswith("."):
            raise InputError(f"write_property_maps: {name!r} is not a usable file name")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, hmap in maps.items():
        path = out / f"{name}.fits"
        if path.exists() and not overwrite:
            raise InputError(f"write_property_maps: {path} exists (overwrite=False)")
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            hmap.write(str(tmp), clobber=True, format="fits")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        paths[name] = path
    return paths
