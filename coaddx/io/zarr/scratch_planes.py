"""Per-visit scratch planes of one run: :class:`ScratchPlanes`.

A step whose later stage reads, per subregion, a small plane of every visit that an earlier
stage made per visit (CompareWarp: each visit's packed spans, written when its artifacts are
found, read back by the final stack) writes them here instead of holding every visit's plane
in memory until the last subregion is stacked. The store holds named Zarr v3 arrays of
``(visit, y, x)`` uint8 with ``(1, cy, cx)`` chunks (lz4 + byte shuffle; chunks of zeros are
not stored), written and read chunk file by chunk file
(:func:`~coaddx.io.zarr.chunks.region_writer`, :func:`~coaddx.io.zarr.chunks.region_reader`),
plus one float64 value per visit.

Lifetime: the directory (``coaddx-scratch-HOST-PID-XXXXXXXX.zarr`` in the folder the caller
names) is made by :meth:`ScratchPlanes.create` (the first task of every computation of the
graph, so a computation after a removal makes it again) and removed by
:func:`release_scratch` of the output arrays it was bound to (:meth:`ScratchPlanes.bind`):
:func:`coaddx.write_coadd` does that when its computation ends, whether it succeeded or
failed. Otherwise it goes when the object that planned it is garbage-collected (the lazy
result that holds its graph is dropped), at interpreter exit, or by
:meth:`ScratchPlanes.remove`; copies sent to worker processes never remove it. A directory
left by a process that died is removed by the next :class:`ScratchPlanes` made in the same
folder. Nothing is written under a user's store.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import psutil
import zarr

from coaddx.errors import StoreError
from coaddx.io.zarr.chunks import LocalChunkArray, LocalChunkWriter, region_reader, region_writer
from coaddx.io.zarr.layout import codecs
from coaddx.io.zarr.lock import pid_alive

__all__ = ["SCRATCH_PREFIX", "SHM", "ScratchPlanes", "default_folder", "release_scratch"]

#: Name prefix of scratch directories (``coaddx-scratch-HOST-PID-XXXXXXXX.zarr``).
SCRATCH_PREFIX = "coaddx-scratch-"
_HOST = socket.gethostname().replace("-", "_")
_LOCK = threading.Lock()
#: Output array name (dask key prefix) -> the scratch store its computation reads.
_BOUND: weakref.WeakValueDictionary[str, ScratchPlanes] = weakref.WeakValueDictionary()


#: The RAM-backed folder a run's scratch planes go to by default where it has room for them.
SHM = Path("/dev/shm")
#: the most of the host's available memory a default tmpfs scratch store may ask for
SHM_FRACTION_OF_MEMORY = 0.125


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def default_folder(nbytes: int) -> Path:
    """Where a scratch store of at most ``nbytes`` (uncompressed) goes when no folder is named:
    :data:`SHM` (tmpfs) where it is a writable folder with that much room, else the system's
    temporary folder. A scratch store is a few hundred small chunk files made and read once;
    on a disk file system each file and folder costs a journalled metadata update (measured on
    the project VM: 2.3 ms per folder and file on ext4 against 0.04 ms on tmpfs, 0.4 s of a
    64-visit 1024^2 CompareWarp run), and the planes compress ~50x, so the room asked is
    far more than they take.

    tmpfs is memory that no worker's budget counts, so it is taken only while the whole
    uncompressed size stays small beside what the host has: at most a quarter of the free
    tmpfs and an eighth of the memory available (:data:`SHM_FRACTION_OF_MEMORY`)."""
    try:
        if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK):
            st = os.statvfs(SHM)
            if 4 * nbytes <= st.f_bavail * st.f_frsize and nbytes <= SHM_FRACTION_OF_MEMORY * (
                psutil.virtual_memory().available
            ):
                return SHM
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _sweep(folder: Path) -> None:
    """Remove the scratch directories in ``folder`` of processes of this host that are gone."""
    try:
        entries = list(folder.glob(f"{SCRATCH_PREFIX}{_HOST}-*.zarr"))
    except OSError:
        return
    for entry in entries:
        parts = entry.name[len(SCRATCH_PREFIX) :].split("-")
        if len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)


class ScratchPlanes:
    """A run's scratch ``(visit, y, x)`` uint8 planes and per-visit values (module docstring).

    Parameters
    ----------
    shape : (int, int, int)
        ``(visits, rows, columns)``.
    chunks : (int, int)
        ``(cy, cx)`` of each stored chunk (the subregions the planes are read back in).
    folder : path, optional
        Where the directory goes (it must be visible to every worker); default
        :func:`default_folder` (``/dev/shm`` where it has room, else the system's temporary
        folder).
    names : tuple of str
        The arrays (each written once per visit: a rerun rewrites the same bytes).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        chunks: tuple[int, int],
        folder: str | os.PathLike[str] | None = None,
        *,
        names: tuple[str, ...] = ("planes",),
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.chunks = (1, *(int(min(c, n)) for c, n in zip(chunks, self.shape[1:], strict=True)))
        self.names = tuple(names)
        self._io_cache: dict[str, tuple[LocalChunkArray, LocalChunkWriter]] = {}
        if path is not None:  # a copy (pickled to a worker): it never removes the directory
            self.path = Path(path)
            return
        base = Path(folder) if folder is not None else default_folder(len(names) * _size(shape))
        _sweep(base)
        tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = base / f"{SCRATCH_PREFIX}{tag}.zarr"
        weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def __reduce__(self) -> tuple[object, ...]:
        return (_attach, (self.shape, self.chunks[1:], self.names, str(self.path)))

    def __dask_tokenize__(self) -> str:
        return str(self.path)

    def create(self) -> None:
        """Make the (empty) store, unless it is there (a rerun of the same graph)."""
        with _LOCK:
            if all((self.path / n / "zarr.json").exists() for n in self.names):
                return
            self._io_cache.clear()
            try:
                shutil.rmtree(self.path, ignore_errors=True)
                self.path.mkdir(parents=True)
                (self.path / "values").mkdir()
                for name in self.names:
                    zarr.create_array(
                        str(self.path / name),
                        shape=self.shape,
                        chunks=self.chunks,
                        dtype="u1",
                        fill_value=0,
                        compressors=codecs("mask"),
                        zarr_format=3,
                    )
            except OSError as exc:
                raise StoreError(f"cannot create the scratch store {self.path}: {exc}") from exc

    def _io(self, name: str) -> tuple[LocalChunkArray, LocalChunkWriter]:
        with _LOCK:
            if name not in self._io_cache:
                reader = region_reader(self.path / name, root=self.path)
                writer = region_writer(self.path / name, root=self.path)
                if reader is None or writer is None:
                    raise StoreError(
                        f"the scratch array {name!r} of {self.path} is missing or unreadable"
                    )
                self._io_cache[name] = (reader, writer)
            return self._io_cache[name]

    def write(self, name: str, index: int, plane: np.ndarray) -> None:
        """Write visit ``index``'s whole plane of array ``name``."""
        ny, nx = self.shape[1:]
        self._io(name)[1].write_box(int(index), (0, 0, nx, ny), np.asarray(plane, np.uint8), 0)

    def read(self, name: str, visits: slice, rows: slice, cols: slice) -> np.ndarray:
        """Array ``name`` for ``visits`` over ``rows`` x ``cols``, ``(visit, y, x)``."""
        box = tuple(
            slice(*s.indices(n)[:2]) for s, n in zip((visits, rows, cols), self.shape, strict=True)
        )
        return np.asarray(self._io(name)[0][box])

    def write_value(self, index: int, value: float) -> None:
        """Store visit ``index``'s value."""
        target = self.path / "values" / f"{int(index)}.npy"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("wb") as fh:
                np.save(fh, np.float64(value))
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write to the scratch store {self.path}: {exc}") from exc

    def read_values(self) -> np.ndarray:
        """Every visit's value (``(visit,)`` float64)."""
        try:
            return np.array(
                [float(np.load(self.path / "values" / f"{i}.npy")) for i in range(self.shape[0])]
            )
        except OSError as exc:
            raise StoreError(f"cannot read the scratch store {self.path}: {exc}") from exc

    def bind(self, names: Iterable[str]) -> None:
        """Remove this store when :func:`release_scratch` is given one of ``names`` (the
        names of the lazy output arrays whose computation reads it)."""
        for name in names:
            _BOUND[name] = self

    def remove(self) -> None:
        """Delete the directory now (it is made again by :meth:`create`)."""
        with _LOCK:
            self._io_cache.clear()
            shutil.rmtree(self.path, ignore_errors=True)


def release_scratch(names: Iterable[str]) -> int:
    """Remove the scratch stores bound to any of ``names`` (:meth:`ScratchPlanes.bind`): their
    computation is over. A later computation of the same graph makes them again. Returns how
    many were bound."""
    found = {id(s): s for s in (_BOUND.get(n) for n in names) if s is not None}
    for scratch in found.values():
        scratch.remove()
    return len(found)


def _attach(
    shape: tuple[int, int, int], chunks: tuple[int, int], names: tuple[str, ...], path: str
) -> ScratchPlanes:
    return ScratchPlanes(shape, chunks, names=names, path=path)
