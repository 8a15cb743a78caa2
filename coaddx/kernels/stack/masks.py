"""Mask propagation of the stack (afw statisticsStack): rejected weight per propagated bit, and
the output mask (OR mask, maskPropagationThresholds, NO_DATA, CLIPPED, maskMap) and n_image."""

from __future__ import annotations

import numba
import numpy as np

from coaddx.kernels.stack.scratch import CNT, COUNT_LOW, JIT, NCLIP, ORA, ORM

__all__ = ["finish_masks", "reject_visit"]


@numba.njit(**JIT)
def reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej):
    """Add wk to rej[b] where the input is rejected (masked or non-finite) and has bit pbits[b].

    row_or (the OR of the visit's mask over the segment) lets absent bits skip their pass; it
    runs while the segment is still in cache.
    """
    zero = np.int32(0)
    for b in range(pbits.size):
        bit = pbits[b]
        if row_or & bit == 0:
            continue
        acc = rej[b]
        if bit & bad == bit:  # the bit itself rejects: no need to look at the value
            for p in range(img.size):
                hit = np.int32(msk[p] & keep & bit) != zero
                acc[p] += wk if hit else 0.0
            continue
        for p in range(img.size):
            xv = np.float64(img[p])
            m = np.int32(msk[p] & keep)
            rejected = (np.int32(m & bad) != zero) | (xv - xv != 0.0)
            hit = rejected & (np.int32(m & bit) != zero)
            acc[p] += wk if hit else 0.0


@numba.njit(**JIT)
def finish_masks(
    x0, x1, nvis, clipped_bit, no_data_bit, sw, iacc, rej, pthr, pbits, mfrom, mto, out_mask, out_n
):
    """Output mask (OR mask, threshold propagation, NO_DATA, CLIPPED, maskMap) and n_image.

    Written as branch-free pixel loops, one per rule, so that they vectorise.
    """
    zero = np.int32(0)
    cnt, orm, ora, nclip = iacc[CNT], iacc[ORM], iacc[ORA], iacc[NCLIP]
    om, on = out_mask[x0:x1], out_n[x0:x1]
    for p in range(x1 - x0):
        on[p] = cnt[p] >> 16
        om[p] = orm[p]
    for b in range(pbits.size):
        bit, threshold, r = pbits[b], pthr[b], rej[b]
        for p in range(x1 - x0):
            om[p] |= bit if r[p] / (sw[p] + r[p]) > threshold else zero
    for p in range(x1 - x0):
        m = om[p] if cnt[p] & COUNT_LOW != zero else no_data_bit
        om[p] = m | (clipped_bit if nclip[p] > zero else zero)
    for i in range(mfrom.size):
        src, dst = mfrom[i], mto[i]
        for p in range(x1 - x0):
            hit = (cnt[p] & COUNT_LOW < nvis) & (np.int32(ora[p] & src) != zero)
            om[p] |= dst if hit else zero
