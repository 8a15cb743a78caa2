"""One writer at a time per store: a lock directory beside the store.

Appending to a warp store is a read-modify-write of its commit log (the ``visits`` and
``pending`` attributes) and of the arrays' length along ``visit``. Two processes appending at
once both read the log, both reserve the same slots and the last to commit wins: visits are
lost or land in another visit's slot. So every writer holds ``.<name>.lock`` (a directory next
to ``<name>``) from the moment it reads the log until its last commit.

Why a directory: ``mkdir`` is atomic, and it fails when the name exists, on every POSIX file
system, including the shared file systems of HPC centres (NFS v2-v4, Lustre, GPFS / Spectrum
Scale, BeeGFS), where ``O_EXCL`` creation was unreliable on old NFS clients and ``flock`` /
``fcntl`` locks depend on mount options (Lustre's ``flock``, NFS's lockd). The lock holds an
``owner.json`` (host, pid, time, what is being written).

Waiting and stale locks. A writer that finds the lock waits for it (a warning names the
holder once), up to ``coaddx.store-lock-timeout`` seconds (default 86400; 0: fail at once), then
raises StoreError naming the holder. A lock whose owner ran on this host and is no longer
alive (a killed driver) is broken with a warning. A lock held from another host cannot be
checked and is waited for; the error message says how to remove it by hand once no coaddx
is writing. Within one process the lock is re-entrant (``make_warps`` holds it while its
store's methods take it again).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask

from coaddx.errors import StoreError

__all__ = ["lock_path", "pid_alive", "store_lock"]

dask.config.update_defaults({"coaddx": {"store-lock-timeout": 86400}})

_HELD: dict[str, int] = {}
_GUARD = threading.RLock()
_POLL = 0.05


def lock_path(store: str | os.PathLike[str]) -> Path:
    """``<parent>/.<name>.lock`` of a store path."""
    p = Path(os.path.abspath(store))
    return p.parent / f".{p.name}.lock"


def _owner(lock: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((lock / "owner.json").read_text()))
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(owner: dict[str, Any], lock: Path) -> bool:
    """True when the owner ran on this host and is gone (or never wrote its owner file and
    the lock is older than a minute)."""
    if not owner:
        try:
            return time.time() - lock.stat().st_mtime > 60
        except OSError:
            return False
    return owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", -1)))


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown writer"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("time", 0))))
    return (
        f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('what', '?')}, since {since})"
    )


def _break(lock: Path) -> None:
    grave = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, grave)  # atomic: only one breaker wins
    except OSError:
        return
    for child in grave.iterdir():
        child.unlink(missing_ok=True)
    grave.rmdir()


def _acquire(lock: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            os.mkdir(lock)
        except FileExistsError:
            owner = _owner(lock)
            if _stale(owner, lock):
                warnings.warn(
                    f"{lock}: breaking the lock of {_describe(owner)}, which is no longer running",
                    RuntimeWarning,
                    stacklevel=4,
                )
                _break(lock)
                continue
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{lock.parent / lock.name[1:-5]} is being written by {_describe(owner)}; "
                    f"gave up after {timeout:g} s (coaddx.store-lock-timeout). If no coaddx is "
                    f"writing it, remove {lock}"
                ) from None
            if not warned:
                warnings.warn(
                    f"{lock.parent / lock.name[1:-5]} is being written by {_describe(owner)}; "
                    "waiting for it",
                    RuntimeWarning,
                    stacklevel=4,
                )
                warned = True
            time.sleep(_POLL)
            continue
        except OSError as exc:
            raise StoreError(f"cannot lock {lock.parent / lock.name[1:-5]}: {exc}") from exc
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        tmp = lock / f"owner.json.{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(json.dumps({**owner, "what": what}))
            os.replace(tmp, lock / "owner.json")
        except OSError as exc:  # a full disk: leave no lock behind
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                lock.rmdir()
            raise StoreError(f"cannot lock {lock.parent / lock.name[1:-5]}: {exc}") from exc
        return


@contextlib.contextmanager
def store_lock(
    store: str | os.PathLike[str], what: str = "write", timeout: float | None = None
) -> Iterator[Path]:
    """Hold the store's writer lock (see the module docstring) for the ``with`` block."""
    lock = lock_path(store)
    key = str(lock)
    if timeout is None:
        timeout = float(dask.config.get("coaddx.store-lock-timeout"))
    with _GUARD:
        held = _HELD.get(key, 0)
        if held:
            _HELD[key] = held + 1
    if not held:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _acquire(lock, what, timeout)
        with _GUARD:
            _HELD[key] = 1
    try:
        yield lock
    finally:
        with _GUARD:
            _HELD[key] -= 1
            last = _HELD[key] == 0
            if last:
                del _HELD[key]
        if last:
            with contextlib.suppress(OSError):
                (lock / "owner.json").unlink(missing_ok=True)
                lock.rmdir()
