"""Epoch and property planes of a coadd: which visits went into each pixel, and when.

Per-pixel reductions over the visit axis of a (V, Y, X) block, beside the stack's ``n_image``
(algorithms.md 2.4; LSST's inputMap and property maps): the first, last and weight-mean MJD of
the inputs used at a pixel, their weight-mean PSF FWHM, how many there are, and a bitmap of
the contributing visits.

"Used" is ``n_image``'s rule (:func:`coaddx.kernels.stack.stack_block`): visit v is used at a
pixel when its weight is finite and > 0 (the stack drops the other visits entirely) and its
mask, before ``remove_bits``, has no ``bad_mask`` bit (LSST's andMask; CompareWarp's artifacts
arrive as the CLIPPED bit, which its final andMask holds, so they are not used). Then
``n_used == n_image`` exactly. With ``image`` given, a NaN input is not used either (NPOINT's
rule: what the weighted mean actually sums; ``n_image`` counts such NaN pixels). The per-pixel
sigma clipping of MEANCLIP is not seen here: a visit clipped at a pixel still counts as used,
as it does in ``n_image``.

The bitmap has ``ceil(n_visits / 64)`` uint64 words per pixel (one for up to 64 visits): bit
``v % 64`` of word ``v // 64`` is visit v (the visit's index in the store). The reduction is
decomposable over chunks of visits (``epoch_chunk`` with the chunk's ``visit_offset``,
``epoch_combine`` in any tree, ``epoch_finalize``), as ``coaddx.kernels.stack.reduce`` is.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from coaddx.errors import InputError

__all__ = [
    "EpochPlanes",
    "EpochSums",
    "bitmap_words",
    "epoch_block",
    "epoch_block_into",
    "epoch_chunk",
    "epoch_combine",
    "epoch_finalize",
    "unpack_visits",
    "used_inputs",
    "visit_counts",
]


class EpochSums(NamedTuple):
    """Partial per-pixel sums over the used inputs of some visits; float64 (Y, X) unless noted."""

    first_mjd: np.ndarray  # min MJD (+inf where none)
    last_mjd: np.ndarray  # max MJD (-inf where none)
    weight: np.ndarray  # Σw
    weighted_mjd: np.ndarray  # Σw mjd
    fwhm_weight: np.ndarray  # Σw over the used inputs with a finite FWHM
    weighted_fwhm: np.ndarray  # Σw fwhm over those
    n_used: np.ndarray  # int32, used inputs
    visits: np.ndarray  # uint64 (W, Y, X), the bitmap of the used visits


class EpochPlanes(NamedTuple):
    """The epoch planes of a block: float64 (Y, X), NaN where no input is used, unless noted."""

    first_mjd: np.ndarray
    last_mjd: np.ndarray
    mean_mjd: np.ndarray  # Σw mjd / Σw
    mean_fwhm: np.ndarray  # Σw fwhm / Σw over the used inputs with a finite FWHM
    n_used: np.ndarray  # int32 (== the stack's n_image without ``image``)
    visits: np.ndarray  # uint64 (W, Y, X) bitmap


def bitmap_words(n_visits: int) -> int:
    """uint64 words per pixel of the visit bitmap of ``n_visits`` visits (at least one)."""
    return max(1, -(-int(n_visits) // 64))


def used_inputs(
    mask: np.ndarray,
    weights: np.ndarray,
    *,
    bad_mask: int,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """The (V, Y, X) bool "used" flags of the module docstring (numpy; the reference rule).

    Examples
    --------
    >>> m = np.array([0, 1, 0], np.int32).reshape(3, 1, 1)
    >>> used_inputs(m, [1.0, 1.0, 0.0], bad_mask=1).ravel().tolist()
    [True, False, False]
    """
    mask = np.asarray(mask)
    w = np.asarray(weights, np.float64).ravel()
    if mask.ndim != 3 or w.size != mask.shape[0]:
        raise InputError(f"mask must be (V, Y, X) with V = {w.size} weights, got {mask.shape}")
    used = (mask.astype(np.int64) & int(bad_mask)) == 0
    used &= (np.isfinite(w) & (w > 0))[:, None, None]
    if image is not None:
        used &= np.isfinite(image)
    return used


def epoch_chunk(
    mask: np.ndarray,
    weights: np.ndarray,
    mjd: np.ndarray,
    fwhm: np.ndarray,
    *,
    bad_mask: int,
    image: np.ndarray | None = None,
    visit_offset: int = 0,
    n_visits: int | None = None,
) -> EpochSums:
    """Partial epoch sums of a (V, Y, X) chunk of visits (one compiled pass, no bool cube).

    Parameters
    ----------
    mask : ndarray of shape (V, Y, X)
        Integer mask planes (int32, as the stack takes them), before ``remove_bits``.
    weights, mjd : (V,) arrays
        The visits' coadd weights and MJDs (finite where the weight is).
    fwhm : (V,) array or broadcastable to (V, Y, X)
        The visits' PSF FWHM (a number per visit, or per pixel e.g. from the detector that
        covers it); non-finite values leave the FWHM mean only.
    bad_mask : int
        The stack's andMask.
    image : ndarray of shape (V, Y, X), optional
        When given, NaN inputs are not used (NPOINT's rule instead of ``n_image``'s).
    visit_offset : int
        Index of the chunk's first visit in the store (its bit in the bitmap).
    n_visits : int, optional
        Visits in the store (the bitmap's size); default ``visit_offset + V``.

    Examples
    --------
    >>> m = np.zeros((2, 1, 1), np.int32)
    >>> s = epoch_chunk(m, [1.0, 3.0], [60000.0, 60004.0], [3.0, 4.0], bad_mask=1)
    >>> p = epoch_finalize(s)
    >>> float(p.first_mjd[0, 0]), float(p.mean_mjd[0, 0]), float(p.mean_fwhm[0, 0])
    (60000.0, 60003.0, 3.75)
    >>> int(p.visits[0, 0, 0]), int(p.n_used[0, 0])
    (3, 2)
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype.kind not in "iu":
        raise InputError(f"mask must be an integer (V, Y, X) array, got {mask.dtype} {mask.shape}")
    nv, ny, nx = mask.shape
    w, t = (np.asarray(a, np.float64).ravel() for a in (weights, mjd))
    if w.size != nv or t.size != nv:
        raise InputError(f"weights and mjd need {nv} entries, got {w.size} and {t.size}")
    fw = np.asarray(fwhm, np.float64)
    fv, fpix = (fw.ravel(), None) if fw.ndim == 1 else (np.zeros(nv), fw)
    if fv.size != nv:
        raise InputError(
            f"fwhm must be (V,) = ({nv},) or broadcast to {mask.shape}, got {fw.shape}"
        )
    if fpix is not None:
        try:
            fpix = np.broadcast_to(fpix, mask.shape)
        except ValueError:
            raise InputError(
                f"fwhm must be (V,) = ({nv},) or broadcast to {mask.shape}, got {fw.shape}"
            ) from None
    included = np.isfinite(w) & (w > 0)
    if np.any(included & ~np.isfinite(t)):
        raise InputError("mjd must be finite for every visit with a positive weight")
    offset = int(visit_offset)
    total = offset + nv if n_visits is None else int(n_visits)
    if offset < 0 or total < offset + nv:
        raise InputError(f"visits {offset}..{offset + nv - 1} do not fit a store of {total}")
    img = None if image is None else np.asarray(image)
    if img is not None and img.shape != mask.shape:
        raise InputError(f"image has shape {img.shape}, mask {mask.shape}")
    sums = _empty_sums(ny, nx, bitmap_words(total))
    _accumulate(
        mask,
        np.int64(bad_mask),
        img,
        np.flatnonzero(included),
        w,
        t,
        fv,
        fpix,
        offset,
        *sums,
    )
    return sums


def _empty_sums(ny: int, nx: int, words: int) -> EpochSums:
    return EpochSums(
        np.full((ny, nx), np.inf),
        np.full((ny, nx), -np.inf),
        np.zeros((ny, nx)),
        np.zeros((ny, nx)),
        np.zeros((ny, nx)),
        np.zeros((ny, nx)),
        np.zeros((ny, nx), np.int32),
        np.zeros((words, ny, nx), np.uint64),
    )


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _accumulate(
    mask, bad, image, vis, w, t, fv, fpix, offset, first, last, sw, swt, swf_w, swf, n, bits
):  # pragma: no cover - numba
    """Add every used input of the included visits ``vis`` to the sums, a row at a time.

    The row's accumulators stay in cache while the visits stream past, and the pixel loop is
    branch-free (selects), so it vectorises. ``image`` None (no finiteness test) and ``fpix``
    None (the per-visit FWHM ``fv``) are pruned at compile time: separate specialisations.
    """
    ny, nx = mask.shape[1], mask.shape[2]
    inf, zero64 = np.inf, np.uint64(0)
    for y in range(ny):
        r_first, r_last = first[y], last[y]
        r_sw, r_swt, r_swf_w, r_swf, r_n = sw[y], swt[y], swf_w[y], swf[y], n[y]
        for k in range(vis.size):
            v = vis[k]
            wk, tk, fvk = w[v], t[v], fv[v]
            wt = wk * tk
            g = offset + v
            r_bits = bits[g >> 6, y]
            bit = np.uint64(1) << np.uint64(g & 63)
            m_row = mask[v, y]
            for x in range(nx):
                used = (np.int64(m_row[x]) & bad) == 0
                if image is not None:
                    val = image[v, y, x]
                    used = used & (val - val == 0)
                if fpix is None:
                    fk = fvk
                else:
                    fk = fpix[v, y, x]
                ok = used & (fk - fk == 0)
                r_first[x] = min(r_first[x], tk if used else inf)
                r_last[x] = max(r_last[x], tk if used else -inf)
                r_sw[x] += wk if used else 0.0
                r_swt[x] += wt if used else 0.0
                r_swf_w[x] += wk if ok else 0.0
                r_swf[x] += wk * fk if ok else 0.0
                r_n[x] += np.int32(1) if used else np.int32(0)
                r_bits[x] |= bit if used else zero64


def epoch_combine(*partials: EpochSums) -> EpochSums:
    """Merge the partial sums of disjoint sets of visits of one store (at least one)."""
    if not partials:
        raise InputError("epoch_combine needs at least one EpochSums")
    words = {p.visits.shape[0] for p in partials}
    if len(words) != 1:
        raise InputError(f"partial sums have bitmaps of different sizes: {sorted(words)} words")
    first = np.minimum.reduce([p.first_mjd for p in partials])
    last = np.maximum.reduce([p.last_mjd for p in partials])
    sw, swt, swf_w, swf, n = (
        np.sum([getattr(p, name) for p in partials], axis=0)
        for name in ("weight", "weighted_mjd", "fwhm_weight", "weighted_fwhm", "n_used")
    )
    visits = np.bitwise_or.reduce([p.visits for p in partials])
    return EpochSums(first, last, sw, swt, swf_w, swf, n.astype(np.int32), visits)


def epoch_finalize(sums: EpochSums) -> EpochPlanes:
    """The epoch planes from their sums (NaN where no input is used)."""
    none = sums.n_used == 0
    return EpochPlanes(
        np.where(none, np.nan, sums.first_mjd),
        np.where(none, np.nan, sums.last_mjd),
        _ratio(sums.weighted_mjd, sums.weight),
        _ratio(sums.weighted_fwhm, sums.fwhm_weight),
        sums.n_used.astype(np.int32),
        sums.visits,
    )


def epoch_block(
    mask: np.ndarray,
    weights: np.ndarray,
    mjd: np.ndarray,
    fwhm: np.ndarray,
    *,
    bad_mask: int,
    image: np.ndarray | None = None,
    visit_offset: int = 0,
    n_visits: int | None = None,
) -> EpochPlanes:
    """The epoch planes of one (V, Y, X) block, equal to ``epoch_finalize(epoch_chunk(...))``
    (the means within rounding, the rest exactly).

    With a per-visit ``fwhm`` (the coadd's case) it takes the fast path: one pass over the
    masks builds the bitmap, then every plane comes from the bitmap through per-byte tables
    (the sums, minimum and maximum over each group of 8 visits, for each of its 256 subsets),
    one lookup per 8 visits per pixel instead of a dozen updates per visit. A per-pixel
    ``fwhm`` takes :func:`epoch_chunk`'s path.
    """
    fw = np.asarray(fwhm, np.float64)
    if fw.ndim != 1:
        return epoch_finalize(
            epoch_chunk(
                mask,
                weights,
                mjd,
                fwhm,
                bad_mask=bad_mask,
                image=image,
                visit_offset=visit_offset,
                n_visits=n_visits,
            )
        )
    mask = np.asarray(mask)
    nv, ny, nx = mask.shape if mask.ndim == 3 else (0, 0, 0)
    total = int(visit_offset) + nv if n_visits is None else int(n_visits)
    out = EpochPlanes(
        np.empty((ny, nx)),
        np.empty((ny, nx)),
        np.empty((ny, nx)),
        np.empty((ny, nx)),
        np.empty((ny, nx), np.int32),
        np.empty((bitmap_words(total), ny, nx), np.uint64),
    )
    return epoch_block_into(
        out,
        mask,
        weights,
        mjd,
        fw,
        bad_mask=bad_mask,
        image=image,
        visit_offset=visit_offset,
        n_visits=n_visits,
    )


def epoch_block_into(
    out: EpochPlanes,
    mask: np.ndarray,
    weights: np.ndarray,
    mjd: np.ndarray,
    fwhm: np.ndarray,
    *,
    bad_mask: int,
    image: np.ndarray | None = None,
    visit_offset: int = 0,
    n_visits: int | None = None,
) -> EpochPlanes:
    """:func:`epoch_block`'s fast path (a per-visit ``fwhm``) written into the arrays of
    ``out`` (any strides and float dtypes, e.g. the fields of a structured block; the bitmap
    is cleared first); returns ``out``."""
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype.kind not in "iu":
        raise InputError(f"mask must be an integer (V, Y, X) array, got {mask.dtype} {mask.shape}")
    empty = epoch_chunk(  # epoch_chunk's checks of the arguments, on an empty block
        mask[:, :0, :0],
        weights,
        mjd,
        fwhm,
        bad_mask=bad_mask,
        image=None if image is None else np.asarray(image)[:, :0, :0],
        visit_offset=visit_offset,
        n_visits=n_visits,
    )
    fw = np.asarray(fwhm, np.float64)
    if fw.ndim != 1:
        raise InputError(f"epoch_block_into takes a per-visit fwhm, got shape {fw.shape}")
    ny, nx = mask.shape[1:]
    if out.visits.shape != (empty.visits.shape[0], ny, nx) or out.n_used.shape != (ny, nx):
        raise InputError(
            f"out holds a bitmap of {out.visits.shape} for a block of {mask.shape}: needs "
            f"{(empty.visits.shape[0], ny, nx)}"
        )
    w, t = (np.asarray(a, np.float64).ravel() for a in (weights, mjd))
    included = np.isfinite(w) & (w > 0)
    offset = int(visit_offset)
    out.visits[...] = 0
    img = None if image is None else np.asarray(image)
    _fill_bitmap(mask, np.int64(bad_mask), img, np.flatnonzero(included), offset, out.visits)
    tables = _byte_tables(np.where(included, w, 0.0), np.where(included, t, 0.0), fw, offset)
    _from_bitmap(out.visits, *tables, *out[:5])
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _fill_bitmap(mask, bad, image, vis, offset, bits):  # pragma: no cover - numba
    """Set bit ``offset + v`` of the bitmap where visit ``v`` (of ``vis``) is used: a row of
    the bitmap stays in cache while the visits' mask rows stream past (branch-free)."""
    ny, nx = mask.shape[1], mask.shape[2]
    one, zero = np.uint64(1), np.uint64(0)
    for y in range(ny):
        for k in range(vis.size):
            v = vis[k]
            g = offset + v
            row = bits[g >> 6, y]
            bit = one << np.uint64(g & 63)
            m_row = mask[v, y]
            for x in range(nx):
                used = (np.int64(m_row[x]) & bad) == 0
                if image is not None:
                    val = image[v, y, x]
                    used = used & (val - val == 0)
                row[x] |= bit if used else zero


def _byte_tables(
    w: np.ndarray, t: np.ndarray, fwhm: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group of 8 bitmap bits and each of its 256 subsets: Σw, Σw t, Σw over a finite
    FWHM, Σw fwhm (float64 (G, 256, 4)), min and max MJD ((G, 256), ±inf for none) and the
    popcount (256,). Bits of no visit of the block weigh nothing."""
    nv = w.size
    groups = -(-(offset + nv) // 8)
    g = np.arange(groups * 8) - offset
    inside = (g >= 0) & (g < nv)
    idx = np.where(inside, g, 0)
    wg = np.where(inside, w[idx], 0.0).reshape(groups, 8)
    tg = np.where(inside, t[idx], 0.0).reshape(groups, 8)
    fg = np.where(inside, fwhm[idx], np.nan).reshape(groups, 8)
    ok = np.isfinite(fg)
    subsets = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # (256, 8)
    sub = subsets.astype(np.float64)
    sums = np.stack(
        [
            wg @ sub.T,
            (wg * tg) @ sub.T,
            np.where(ok, wg, 0.0) @ sub.T,
            np.where(ok, wg * fg, 0.0) @ sub.T,
        ],
        axis=-1,
    )
    live = subsets[None] & (wg > 0)[:, None, :]  # (G, 256, 8)
    tmin = np.where(live, tg[:, None, :], np.inf).min(axis=2)
    tmax = np.where(live, tg[:, None, :], -np.inf).max(axis=2)
    return sums, tmin, tmax, subsets.sum(axis=1).astype(np.int32)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _from_bitmap(
    bits, sums, tmin, tmax, pop, first, last, mean_t, mean_f, n
):  # pragma: no cover - numba
    """The planes of each pixel from its bitmap: one table lookup per non-empty byte; a
    pixel with the bitmap of the pixel before it (most, away from masks and footprint edges)
    copies that pixel's planes."""
    words, ny, nx = bits.shape
    nan = np.nan
    for y in range(ny):
        for x in range(nx):
            if x > 0:
                same = True
                for k in range(words):
                    same = same and bits[k, y, x] == bits[k, y, x - 1]
                if same:
                    n[y, x] = n[y, x - 1]
                    first[y, x] = first[y, x - 1]
                    last[y, x] = last[y, x - 1]
                    mean_t[y, x] = mean_t[y, x - 1]
                    mean_f[y, x] = mean_f[y, x - 1]
                    continue
            sw, swt, swf_w, swf = 0.0, 0.0, 0.0, 0.0
            lo, hi = np.inf, -np.inf
            count = 0
            for k in range(words):
                word = bits[k, y, x]
                j = 8 * k
                while word != 0:
                    low = word & np.uint64(255)
                    if low != 0:
                        b = np.int64(low)
                        sw += sums[j, b, 0]
                        swt += sums[j, b, 1]
                        swf_w += sums[j, b, 2]
                        swf += sums[j, b, 3]
                        lo = min(lo, tmin[j, b])
                        hi = max(hi, tmax[j, b])
                        count += pop[b]
                    word >>= np.uint64(8)
                    j += 1
            n[y, x] = count
            first[y, x] = lo if count else nan
            last[y, x] = hi if count else nan
            mean_t[y, x] = swt / sw if sw != 0 else nan
            mean_f[y, x] = swf / swf_w if swf_w != 0 else nan


def unpack_visits(visits: np.ndarray, n_visits: int) -> np.ndarray:
    """The (n_visits, Y, X) bool "used" flags from a (W, Y, X) uint64 bitmap.

    Examples
    --------
    >>> unpack_visits(np.array([[[5]]], np.uint64), 3).ravel().tolist()
    [True, False, True]
    """
    words = np.asarray(visits, np.uint64)
    if words.ndim != 3 or words.shape[0] < bitmap_words(n_visits):
        raise InputError(
            f"a bitmap of {n_visits} visits needs (W, Y, X) with W >= "
            f"{bitmap_words(n_visits)}, got {words.shape}"
        )
    v = np.arange(int(n_visits))
    shifts = (v & 63).astype(np.uint64)[:, None, None]
    return ((words[v >> 6] >> shifts) & np.uint64(1)).astype(bool)


def visit_counts(visits: np.ndarray) -> np.ndarray:
    """Contributing visits per pixel (the popcount of the bitmap), int32 (Y, X)."""
    words = np.asarray(visits, np.uint64)
    count = np.zeros(words.shape[1:], np.int32)
    for word in words:
        for b in range(64):
            count += ((word >> np.uint64(b)) & np.uint64(1)).astype(np.int32)
    return count


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (no warning)."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den != 0)
