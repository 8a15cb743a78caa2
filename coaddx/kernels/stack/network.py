"""Sorting networks applied across the pixels of a (visit, pixel) block: blocks of a few
hundred columns are sorted at once with SIMD min/max. Batcher's odd-even merge sort as a list
of comparators (each loads and stores two rows), or a bitonic sort as passes over 8 rows held
in registers (:func:`bitonic_passes`), for key counts near a power of two (:func:`sort_plan`)."""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from coaddx.kernels.stack.options import readonly
from coaddx.kernels.stack.scratch import JIT

__all__ = [
    "NO_NETWORK",
    "NO_PASSES",
    "batcher_pairs",
    "bitonic_passes",
    "sort_blocked",
    "sort_columns",
    "sort_plan",
    "sorting_network",
]

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


# -- the blocked bitonic sort: passes of up to 12 comparators on 8 rows held in registers ----
# A pass loads 8 (or 4, 2) rows of a pixel block, applies its comparators to the values in
# registers and stores the rows once, where the comparator list above loads and stores two
# rows per comparator. Any correct sorting network leaves the same sorted column, so the two
# give the same result (-0.0 is normalised to +0.0 before either, see ``sort_block``).

SORT8, CLEAN8, CLEAN4, CLEAN2 = range(4)


@lru_cache(maxsize=64)
def bitonic_passes(n):
    """The passes of a bitonic sort of ``n`` keys padded to the next power of two N >= 8 (the
    padding rows must hold +inf): an int64 array of rows (kind, r0, .., r7).

    Each 8-row block is sorted (SORT8, alternately ascending and descending), then the merge of
    stage s (blocks of 2**s) runs its steps of distance >= 8 as CLEAN8 / CLEAN4 / CLEAN2 passes
    on rows {b + multiples of those distances} and its steps of distance 4, 2, 1 as CLEAN8
    passes on 8-row blocks. A pass is descending when its rows are listed in reverse.
    """
    size = 1 << max(3, int(n - 1).bit_length())
    stages = size.bit_length() - 1
    out = []

    def add(kind, rows, ascending):
        rows = list(rows) if ascending else list(rows)[::-1]
        out.append([kind, *rows, *([0] * (8 - len(rows)))])

    for blk in range(0, size, 8):
        add(SORT8, range(blk, blk + 8), stages == 3 or blk & 8 == 0)
    for s in range(4, stages + 1):
        span = 1 << s
        high = [1 << e for e in range(s - 1, 2, -1)]  # distances 2**(s-1) .. 8
        while high:
            group, high = high[:3], high[3:]
            kind = {3: CLEAN8, 2: CLEAN4, 1: CLEAN2}[len(group)]
            bits = sum(group)
            for b in range(size):
                if b & bits:
                    continue
                rows = [
                    b + sum(d for i, d in enumerate(group) if t >> (len(group) - 1 - i) & 1)
                    for t in range(1 << len(group))
                ]
                add(kind, rows, s == stages or b & span == 0)
        for blk in range(0, size, 8):
            add(CLEAN8, range(blk, blk + 8), s == stages or blk & span == 0)
    return readonly(np.array(out, dtype=np.int64).reshape(-1, 9))


def network_rows(n, blocked):
    """Rows of the sort buffer for ``n`` keys: n, or the padded power of two when blocked."""
    return max(8, 1 << int(n - 1).bit_length()) if blocked else n


@numba.njit(**JIT)
def cx(a, b):
    """(min, max) of a compare-exchange, as vminps / vmaxps (a < b ? a : b, a < b ? b : a)."""
    below = a < b
    return (a if below else b), (b if below else a)


@numba.njit(**JIT)
def sort8_pass(buf, r, npix):
    """Sort rows r[1..8] of buf ascending, column by column (Batcher's 19 comparators)."""
    q0, q1, q2, q3, q4, q5, q6, q7 = (
        buf[r[1]],
        buf[r[2]],
        buf[r[3]],
        buf[r[4]],
        buf[r[5]],
        buf[r[6]],
        buf[r[7]],
        buf[r[8]],
    )
    for p in range(npix):
        a0, a1, a2, a3, a4, a5, a6, a7 = q0[p], q1[p], q2[p], q3[p], q4[p], q5[p], q6[p], q7[p]
        a0, a1 = cx(a0, a1)
        a2, a3 = cx(a2, a3)
        a4, a5 = cx(a4, a5)
        a6, a7 = cx(a6, a7)
        a0, a2 = cx(a0, a2)
        a1, a3 = cx(a1, a3)
        a4, a6 = cx(a4, a6)
        a5, a7 = cx(a5, a7)
        a1, a2 = cx(a1, a2)
        a5, a6 = cx(a5, a6)
        a0, a4 = cx(a0, a4)
        a1, a5 = cx(a1, a5)
        a2, a6 = cx(a2, a6)
        a3, a7 = cx(a3, a7)
        a2, a4 = cx(a2, a4)
        a3, a5 = cx(a3, a5)
        a1, a2 = cx(a1, a2)
        a3, a4 = cx(a3, a4)
        a5, a6 = cx(a5, a6)
        q0[p], q1[p], q2[p], q3[p], q4[p], q5[p], q6[p], q7[p] = a0, a1, a2, a3, a4, a5, a6, a7


@numba.njit(**JIT)
def clean8_pass(buf, r, npix):
    """Half-cleaner steps t ^ 4, t ^ 2, t ^ 1 on rows r[1..8] (a bitonic 8-merge)."""
    q0, q1, q2, q3, q4, q5, q6, q7 = (
        buf[r[1]],
        buf[r[2]],
        buf[r[3]],
        buf[r[4]],
        buf[r[5]],
        buf[r[6]],
        buf[r[7]],
        buf[r[8]],
    )
    for p in range(npix):
        a0, a1, a2, a3, a4, a5, a6, a7 = q0[p], q1[p], q2[p], q3[p], q4[p], q5[p], q6[p], q7[p]
        a0, a4 = cx(a0, a4)
        a1, a5 = cx(a1, a5)
        a2, a6 = cx(a2, a6)
        a3, a7 = cx(a3, a7)
        a0, a2 = cx(a0, a2)
        a1, a3 = cx(a1, a3)
        a4, a6 = cx(a4, a6)
        a5, a7 = cx(a5, a7)
        a0, a1 = cx(a0, a1)
        a2, a3 = cx(a2, a3)
        a4, a5 = cx(a4, a5)
        a6, a7 = cx(a6, a7)
        q0[p], q1[p], q2[p], q3[p], q4[p], q5[p], q6[p], q7[p] = a0, a1, a2, a3, a4, a5, a6, a7


@numba.njit(**JIT)
def clean4_pass(buf, r, npix):
    """Half-cleaner steps t ^ 2, t ^ 1 on rows r[1..4]."""
    q0, q1, q2, q3 = buf[r[1]], buf[r[2]], buf[r[3]], buf[r[4]]
    for p in range(npix):
        a0, a1, a2, a3 = q0[p], q1[p], q2[p], q3[p]
        a0, a2 = cx(a0, a2)
        a1, a3 = cx(a1, a3)
        a0, a1 = cx(a0, a1)
        a2, a3 = cx(a2, a3)
        q0[p], q1[p], q2[p], q3[p] = a0, a1, a2, a3


@numba.njit(**JIT)
def clean2_pass(buf, r, npix):
    """One compare-exchange of rows r[1], r[2]."""
    q0, q1 = buf[r[1]], buf[r[2]]
    for p in range(npix):
        q0[p], q1[p] = cx(q0[p], q1[p])


@numba.njit(**JIT)
def sort_blocked(buf, npix, passes):
    """Sort every column buf[:, p] (p < npix) ascending with the passes of
    :func:`bitonic_passes` (buf's rows beyond the keys hold +inf)."""
    for i in range(passes.shape[0]):
        r = passes[i]
        kind = r[0]
        if kind == SORT8:
            sort8_pass(buf, r, npix)
        elif kind == CLEAN8:
            clean8_pass(buf, r, npix)
        elif kind == CLEAN4:
            clean4_pass(buf, r, npix)
        else:
            clean2_pass(buf, r, npix)


#: Sort by the passes when the keys fill at least this fraction of the padded power of two
#: (measured on the project machine, ns per pixel-visit list / passes: 64 keys 0.66 / 0.41,
#: 48 0.63 / 0.55, 200 1.12 / 0.93, 150 1.09 / 1.08; 40 keys 0.59 / 0.66, 33 0.57 / 0.71,
#: 80 0.70 / 0.90, 129 1.07 / 1.24).
PASSES_MIN_FILL = 0.7
#: No passes: sort with the comparator list.
NO_PASSES = readonly(np.zeros((0, 9), np.int64))


@lru_cache(maxsize=64)
def sort_plan(n):
    """How to sort ``n`` keys per pixel: (ci, cj, passes, rows). ``passes`` are those of
    :func:`bitonic_passes` when n fills at least :data:`PASSES_MIN_FILL` of its padded power
    of two, else empty (sort with the comparator list (ci, cj) of :func:`sorting_network`);
    ``rows``: the rows of the sort buffer (padding rows hold +inf)."""
    ci, cj = sorting_network(n)
    if n < 2:
        return ci, cj, NO_PASSES, max(1, int(n))
    rows = network_rows(n, True)
    if n >= PASSES_MIN_FILL * rows:
        return ci, cj, bitonic_passes(n), rows
    return ci, cj, NO_PASSES, int(n)
