"""Runtime (non-science) settings in dask's config under the ``coaddx`` namespace."""

from __future__ import annotations

from pathlib import Path

import dask.config
import yaml
from dask.utils import parse_bytes

from coaddx.constants import STORE_CHUNK
from coaddx.errors import ConfigError

__all__ = ["memory_per_task", "scratch_dir", "store_chunk"]

_DEFAULTS = Path(__file__).with_name("_defaults.yaml")
with _DEFAULTS.open() as fh:
    dask.config.update_defaults(yaml.safe_load(fh))
dask.config.update_defaults({"coaddx": {"store-chunk": STORE_CHUNK}})
# where the dashboards of the clusters coaddx starts listen (coaddx.runtime.security):
# null = distributed.dashboard.address if set, else 127.0.0.1:8787 (this host only)
dask.config.update_defaults({"coaddx": {"dashboard-address": None}})
# where runs keep per-visit scratch planes (CompareWarp): null = /dev/shm where it has room,
# else the system's temporary folder (coaddx.io.zarr.scratch_planes.default_folder)
dask.config.update_defaults({"coaddx": {"scratch-dir": None}})


def memory_per_task() -> int:
    """Bytes one stacking task may use (``coaddx.memory-per-task``)."""
    value = dask.config.get("coaddx.memory-per-task")
    try:
        nbytes = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"coaddx.memory-per-task = {value!r} is not a byte size") from exc
    if nbytes <= 0:
        raise ConfigError(f"coaddx.memory-per-task must be positive, got {value!r}")
    return nbytes


def store_chunk() -> int:
    """Spatial chunk C of a new warp store, stored as ``(1, C, C)`` (``coaddx.store-chunk``)."""
    value = int(dask.config.get("coaddx.store-chunk"))
    if value < 16:
        raise ConfigError(f"coaddx.store-chunk must be >= 16 pixels, got {value}")
    return value


def scratch_dir() -> Path | None:
    """Folder of the per-visit scratch stores of a run (``coaddx.scratch-dir``; None:
    ``/dev/shm`` where it has room, else the system's temporary folder). With a multi-host
    cluster it must be one every worker sees."""
    value = dask.config.get("coaddx.scratch-dir", None)
    return Path(value) if value else None
