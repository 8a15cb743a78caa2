"""Memory of freed read blocks, kept for the next read of the same size
(:data:`READ_BLOCKS`, the read blocks of :class:`coaddx.io.zarr.chunks.LocalChunkArray`)."""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["READ_BLOCKS", "BlockPool"]


class BlockPool:
    """Memory of freed read blocks, kept for the next read of the same size.

    A stacking task's block (all visits x one subregion, 64 MiB for 64 visits of 512 x 512
    float32) is larger than a glibc thread arena's heaps (64 MiB), so glibc maps it freshly in
    every dask thread but one and unmaps it on free, however ``tune_malloc`` set the
    thresholds: each read then pays the kernel zeroing every page (measured on the project VM:
    a fifth of a threaded meanclip stack's CPU time). Blocks of ``min_bytes`` or more come from
    here instead; when the last view of one is gone its memory returns to the pool (at most
    ``max_bytes`` of it; never memory something else still references).
    """

    def __init__(self, max_bytes: int, min_bytes: int) -> None:
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self._lock = threading.Lock()
        self._free: dict[int, list[np.ndarray]] = {}
        self.free_bytes = 0

    def empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An uninitialised array, like ``np.empty``."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            stack = self._free.get(nbytes)
            raw = stack.pop() if stack else None
            if raw is not None:
                self.free_bytes -= nbytes
        if raw is None:
            raw = np.empty(nbytes, np.uint8)
        out = np.ndarray(tuple(shape), dtype, buffer=raw)
        weakref.finalize(out, self._release, raw)
        return out

    def _release(self, raw: np.ndarray) -> None:
        # a live view of the block references raw (numpy views keep the owner as their base):
        # then the memory stays out of the pool
        if sys.getrefcount(raw) > _RELEASE_REFS:
            return
        with self._lock:
            if self.free_bytes + raw.nbytes <= self.max_bytes:
                self._free.setdefault(raw.nbytes, []).append(raw)
                self.free_bytes += raw.nbytes

    def clear(self) -> None:
        """Drop the memory kept for reuse."""
        with self._lock:
            self._free.clear()
            self.free_bytes = 0


def _release_refs() -> int:
    """References to a block's memory inside :meth:`BlockPool._release` when nothing else
    holds it (the finalizer's arguments, the call, getrefcount's own)."""
    seen: list[int] = []
    block = np.ndarray((1,), np.uint8, buffer=np.empty(1, np.uint8))
    weakref.finalize(block, lambda raw: seen.append(sys.getrefcount(raw)), block.base)
    del block
    return seen[0]


_RELEASE_REFS = _release_refs()
#: The read blocks of :class:`~coaddx.io.zarr.chunks.LocalChunkArray` (blocks of 16 MiB or
#: more; up to 1 GiB kept).
READ_BLOCKS = BlockPool(1 << 30, 16 << 20)
