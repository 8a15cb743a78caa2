"""The coadd store: a Zarr v3 group of (y, x) planes written atomically (design.md,
"Coadd store").

An output is written whole or not at all, and nothing is left behind: the store is written
under a hidden name beside its path (``.NAME.tmp-HOST-PID-XXXXXXXX``) and swapped into place
only when complete (see :func:`write_coadd` for the rule), and what a crashed writer left beside
the path is cleaned up, or restored, by the next write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import xarray as xr
from zarr.storage import LocalStore

from coaddx._version import __version__
from coaddx.errors import CoaddxError, InputError, StoreError
from coaddx.io.zarr.layout import codecs, jsonable
from coaddx.io.zarr.lock import pid_alive
from coaddx.io.zarr.scratch_planes import release_scratch

__all__ = ["exchange_paths", "open_coadd", "write_coadd", "write_failure"]

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is too large for the file system",
}


def write_failure(target: Path, exc: OSError, *, existed: bool) -> StoreError:
    """The :class:`StoreError` for an output ``target`` that could not be written."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    kept = "the previous one there is unchanged" if existed else "nothing was written"
    return StoreError(f"cannot write {target}: {reason} ({exc}); {kept}")


# --- swapping a complete output into place -----------------------------------------------------


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the platform or the file system cannot.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_in(tmp: Path, path: Path, tag: str) -> Path | None:
    """Move the complete ``tmp`` to ``path``; return where the previous output now is."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return None
    if exchange_paths(tmp, path):
        return tmp
    old = path.with_name(f".{path.name}.old-{tag}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    return old


def _discard(target: Path) -> bool:
    """Remove a file or folder, retrying while late writers finish; True when it is gone."""
    for attempt in range(5):
        if not os.path.lexists(target):
            return True
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        if not os.path.lexists(target):
            return True
        time.sleep(0.05 * 2**attempt)
    warnings.warn(f"could not remove {target}; remove it by hand", RuntimeWarning, stacklevel=3)
    return False


# --- leftovers of earlier crashes --------------------------------------------------------------


def _owner_alive(tag: str) -> bool | str:
    """Whether the writer that named a leftover ``tag`` still runs; its host where unknown."""
    parts = tag.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # an older coaddx's name, with no owner recorded
    host, pid = parts[0], int(parts[1])
    if host != _HOST:
        return host
    if pid == os.getpid():
        return tag in _ACTIVE
    return pid_alive(pid)


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """The stale ``.tmp-*`` and ``.old-*`` beside ``path`` (dead writers only)."""
    stale: dict[str, list[Path]] = {"tmp": [], "old": []}
    try:
        entries = sorted(path.parent.iterdir())
    except OSError:
        return [], []
    for entry in entries:
        for kind in stale:
            prefix = f".{path.name}.{kind}-"
            if not entry.name.startswith(prefix):
                continue
            owner = _owner_alive(entry.name[len(prefix) :])
            if owner is False:
                stale[kind].append(entry)
            elif owner is not True:
                warnings.warn(
                    f"{entry} was left alone: it may be a write in progress on host {owner}; "
                    "remove it if no coaddx runs there",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return stale["tmp"], stale["old"]


def _recover(path: Path) -> None:
    """Restore an interrupted swap and remove what crashed writers left beside ``path``.

    A ``.old-*`` is the previous coadd of a swap that did not finish: when no coadd is at
    ``path`` the newest one is moved back; every other leftover of a dead writer is removed.
    """
    tmps, olds = _leftovers(path)
    if olds and not os.path.lexists(path):
        olds.sort(key=lambda p: p.stat().st_mtime)
        keep = olds.pop()
        try:
            os.rename(keep, path)
        except OSError as exc:
            raise StoreError(
                f"{path} is missing and its previous coadd is at {keep}, but it cannot be "
                f"moved back ({exc}); rename it to {path.name} by hand"
            ) from exc
        warnings.warn(
            f"restored {path} from {keep}, left by a write that was interrupted",
            RuntimeWarning,
            stacklevel=3,
        )
    for entry in tmps + olds:
        if _discard(entry):
            warnings.warn(
                f"removed {entry}, left by an interrupted write", RuntimeWarning, stacklevel=3
            )


def _check_replaceable(path: Path) -> None:
    """overwrite=True replaces a coadd store or an empty folder, never other data."""
    refuse = f"{path} is not a coadd store ({{}}); refusing to replace it: remove it or choose "
    refuse += "another path"
    if path.is_symlink() or not path.is_dir():
        raise StoreError(refuse.format("not a folder"))
    meta = path / "zarr.json"
    if not meta.exists():
        if any(path.iterdir()):
            raise StoreError(refuse.format("a folder with other files"))
        return
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
        kind = attrs.get("coaddx", {}).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise StoreError(refuse.format(f"its zarr.json cannot be read: {exc}")) from exc
    if kind != "coadd":
        raise StoreError(refuse.format(f"a {kind} store" if kind else "a Zarr group of no kind"))


# --- writes that can be cancelled --------------------------------------------------------------


class _Writes:
    """The chunk writes of one write_coadd call in this process: counted, and refused once
    the call ends (so the cleanup never races a worker thread still writing)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.closed = False

    def close(self, timeout: float = 60.0) -> None:
        with self.cond:
            self.closed = True
            self.cond.wait_for(lambda: self.active == 0, timeout=timeout)


_ACTIVE: dict[str, _Writes] = {}


@contextlib.contextmanager
def _guard(token: str, root: Path) -> Iterator[None]:
    writes = _ACTIVE.get(token)
    if writes is None:  # a worker process, or the call is over: write only into a live tmp
        if not root.is_dir():
            raise StoreError(f"the write of {root} was cancelled")
        yield
        return
    with writes.cond:
        if writes.closed:
            raise StoreError(f"the write of {root} was cancelled")
        writes.active += 1
    try:
        yield
    finally:
        with writes.cond:
            writes.active -= 1
            writes.cond.notify_all()


class _GuardedStore(LocalStore):
    """A LocalStore whose writes are refused once its write_coadd call has ended."""

    def __init__(self, root: Path | str, *, read_only: bool = False, token: str = "") -> None:
        super().__init__(root, read_only=read_only)
        self.token = token

    def with_read_only(self, read_only: bool = False) -> _GuardedStore:
        return type(self)(self.root, read_only=read_only, token=self.token)

    async def set(self, key: str, value: Any) -> None:
        with _guard(self.token, self.root):
            await super().set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        with _guard(self.token, self.root):
            await super().set_if_not_exists(key, value)

    def set_sync(self, key: str, value: Any) -> None:
        with _guard(self.token, self.root):
            super().set_sync(key, value)


# --- the public functions ----------------------------------------------------------------------


#: The epoch planes (coaddx.coadd.epochs): piecewise constant over the patch, so blosc lz4
#: stores them in a few percent of their size, ~10x faster than the default zstd.
_EPOCH_PLANES = ("first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm", "input_bitmap")


def _prepared(coadd: xr.Dataset) -> xr.Dataset:
    ds = coadd.copy()
    ds.attrs = {k: jsonable(v) for k, v in coadd.attrs.items()}
    ds.attrs["coaddx"] = {"kind": "coadd", "version": __version__}
    for name, var in ds.variables.items():
        var.encoding = {}
        if var.chunks and name in ds.data_vars:
            var.encoding["chunks"] = tuple(c[0] for c in var.chunks)
        if name in ("variance", "mask", "n_image", "epoch_count") or name in _EPOCH_PLANES:
            var.encoding["compressors"] = codecs("variance" if name == "variance" else "mask")
    return ds


def _checked_path(coadd: Any, path: str | os.PathLike[str]) -> Path:
    if not isinstance(coadd, xr.Dataset):
        hint = " (use .to_dataset(name=...))" if isinstance(coadd, xr.DataArray) else ""
        raise InputError(
            f"write_coadd needs an xarray.Dataset of coadd planes, got "
            f"{type(coadd).__module__}.{type(coadd).__name__}{hint}"
        )
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_coadd(
    coadd: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: Callable[[Any], Any] | None = None,
) -> Path:
    """Write a coadd Dataset (lazy or not) to a Zarr v3 store, atomically.

    The lazy planes are computed once, chunk by chunk, straight into the store.

    The rule: the store is written under a hidden name beside ``path``
    (``.NAME.tmp-HOST-PID-XXXXXXXX``) and moved into place only when complete, so at every
    moment ``path`` holds either the previous coadd, whole, or the new one, whole:

    * with ``overwrite=True`` the new and the previous store trade places in one atomic step
      (Linux ``renameat2(RENAME_EXCHANGE)``: ext4, xfs, btrfs, tmpfs); where that is not
      available (NFS, other systems), in two renames (previous -> ``.NAME.old-*``, new ->
      ``path``), and a failure of the second puts the previous one back;
    * a failure or an interrupt (Ctrl-C) before that leaves the previous coadd untouched and
      removes the temporary store, after the chunk writes still running in this process's
      worker threads have stopped (later ones are refused);
    * whatever a writer that died left beside ``path`` is dealt with by the next call: a
      ``.NAME.old-*`` is moved back when no coadd is at ``path``, every other ``.tmp-*`` /
      ``.old-*`` of a dead writer is removed; each with a ``RuntimeWarning`` naming it. Those
      of a writer still running, or of another host (which cannot be checked), are left alone;
    * ``overwrite=True`` replaces only a coadd store or an empty folder, never other data;
    * the scratch stores the computation read (CompareWarp's per-visit planes,
      :mod:`coaddx.io.zarr.scratch_planes`) are removed when it ends, succeeded or failed.

    Parameters
    ----------
    coadd : xarray.Dataset
        The coadd planes over ``(y, x)``.
    path : path-like
        The store to write. Through a symbolic link, the store is written at its target.
    overwrite : bool
        Replace an existing coadd store at ``path``.
    compute : callable, optional
        Called with the delayed write to run it (e.g. on a cluster with a progress bar);
        default ``dask.compute``.

    Raises
    ------
    InputError
        ``coadd`` is not an ``xarray.Dataset``.
    StoreError
        ``path`` exists (and not ``overwrite``) or is not a coadd store; or the store cannot be
        written (a full disk, a read-only or unwritable folder), the previous one kept.
    """
    given = Path(path)
    path = _checked_path(coadd, given)
    _recover(path)
    existed = os.path.lexists(path)
    if existed and not overwrite:
        raise StoreError(f"{path} exists; pass overwrite=True to replace it")
    if existed:
        _check_replaceable(path)
    tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    writes = _ACTIVE[tag] = _Writes()
    previous = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = _GuardedStore(tmp, token=tag)
        ds = _prepared(coadd)
        delayed = ds.to_zarr(store, mode="w-", zarr_format=3, consolidated=False, compute=False)
        (compute or dask.compute)(delayed)
        previous = _swap_in(tmp, path, tag)
    except CoaddxError:
        raise
    except OSError as exc:
        raise write_failure(path, exc, existed=existed) from exc
    finally:
        try:
            writes.close()
            _discard(tmp)
            if previous is not None:
                _discard(previous)
        finally:
            _ACTIVE.pop(tag, None)
            release_scratch(_dask_names(coadd))
    return given


def _dask_names(ds: xr.Dataset) -> list[str]:
    """The names of the lazy arrays of ``ds`` (the scratch stores they read are released)."""
    return [str(v.data.name) for v in ds.variables.values() if dask.is_dask_collection(v.data)]


def open_coadd(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a coadd store written by :func:`write_coadd` (lazy)."""
    path = Path(path)
    if not path.exists():
        olds = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"))
        hint = f"; a write was interrupted: the previous coadd is at {olds[-1]}" if olds else ""
        raise StoreError(f"no coadd store at {path}{hint}")
    try:
        ds = xr.open_zarr(str(path), zarr_format=3, consolidated=False)
    except Exception as exc:
        raise StoreError(f"cannot open coadd store {path}: {exc}") from exc
    if ds.attrs.get("coaddx", {}).get("kind") != "coadd":
        raise StoreError(f"{path} is not a coaddx coadd store")
    return ds
