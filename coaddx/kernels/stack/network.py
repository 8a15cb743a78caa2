"""Batcher's odd-even merge sorting network, applied across the pixels of a (visit, pixel)
block: blocks of a few hundred columns are sorted at once with SIMD min/max."""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from coaddx.kernels.stack.options import readonly
from coaddx.kernels.stack.scratch import JIT

__all__ = ["NO_NETWORK", "batcher_pairs", "sort_columns", "sorting_network"]

#: The comparators of "no network" (per-pixel selection instead).
NO_NETWORK = (readonly(np.zeros(0, np.int64)), readonly(np.zeros(0, np.int64)))


@lru_cache(maxsize=64)
def sorting_network(n):
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` keys.

    Built for the next power of two >= n with every comparator that touches an index >= n
    dropped (valid because padding keys are +inf and stay on top). Returns two int64 arrays.
    """
    size = 1 << max(0, int(n) - 1).bit_length()
    pairs = [(i, j) for i, j in batcher_pairs(size) if j < n]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return readonly(np.ascontiguousarray(arr[:, 0])), readonly(np.ascontiguousarray(arr[:, 1]))


def batcher_pairs(size):
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        yield i + j, i + j + k
            k //= 2
        p *= 2


@numba.njit(**JIT)
def sort_columns(buf, npix, ci, cj):
    """Sort every column buf[:, p] (p < npix) ascending with the comparator network (ci, cj)."""
    zero = buf.dtype.type(0)  # "+ 0" keeps LLVM from turning the min store into a masked store
    for c in range(ci.size):
        lo = buf[ci[c]]
        hi = buf[cj[c]]
        for p in range(npix):
            a = lo[p]
            b = hi[p]
            below = a < b
            lo[p] = (a if below else b) + zero
            hi[p] = (b if below else a) + zero
