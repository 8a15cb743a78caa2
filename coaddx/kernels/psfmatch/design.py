"""Compiled parts of the PSF-matching fit (algorithms.md 6.3, 6.4): normal equations from
separable filters, small LU solves and the candidates' difference-image statistics.

Every kernel runs over a batch of stamps in one call, in one thread with the GIL released,
without BLAS (so that no BLAS thread pool starts under dask's workers); stamps are stacked as
(n, ny, nx) arrays and a batch is a selection ``rows`` of them. Correlations are in afw's sense,
``(B ⋆ T)[y, x] = Σ_{v,u} B[v, u] T[y + v, x + u]`` over the valid region (the stamp shrunk by
the kernel footprint); see :mod:`coaddx.kernels.psfmatch`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

__all__ = [
    "combine_basis",
    "correlation_normal_equations",
    "diffim_stats",
    "lu_solve",
    "separable_normal_equations",
]

#: numba options of these kernels (FMA contraction allowed: round-off only).
JIT: dict[str, Any] = {
    "nogil": True,
    "cache": True,
    "error_model": "numpy",
    "fastmath": {"contract"},
}
#: and for the kernels whose sums may be reordered (vectorised dot products).
DOT: dict[str, Any] = {**JIT, "fastmath": {"contract", "reassoc"}}


@numba.njit(**DOT)
def _accumulate(c, data, weight, m, b):  # pragma: no cover - compiled
    """m = Σ_p w_p c[:, p] c[:, p]ᵀ, b = Σ_p w_p d_p c[:, p] for columns c (P, n_pix)."""
    n_par, n_pix = c.shape
    wc = np.empty(n_pix)
    for j in range(n_par):
        for p in range(n_pix):
            wc[p] = weight[p] * c[j, p]
        s = 0.0
        for p in range(n_pix):
            s += wc[p] * data[p]
        b[j] = s
        for k in range(j, n_par):
            s = 0.0
            for p in range(n_pix):
                s += wc[p] * c[k, p]
            m[j, k] = s
            m[k, j] = s


@numba.njit(**JIT)
def _correlate_rows(src, taps, step, n_out, out):  # pragma: no cover - compiled
    """out[q] += Σ_i taps[i] src[q + i·step] for q < n_out (one 1-D pass on flat planes)."""
    dest = out[:n_out]
    for i in range(taps.size):
        a = taps[i]
        seg = src[i * step : i * step + n_out]  # slices: no index wraparound, so it vectorises
        for q in range(n_out):
            dest[q] += a * seg[q]


@numba.njit(**JIT)
def _axpy(a, x, out):  # pragma: no cover - compiled
    for q in range(out.size):
        out[q] += a * x[q]


@numba.njit(**JIT)
def _x_passes(t, filters, parity, pairs, tmp, h):  # pragma: no cover - compiled
    """h[f, y·vx + x] = Σ_u filters[f, u] t[y, x + u] (valid columns only).

    The passes run over the flattened stamp at full width (columns >= vx of a row wrap into
    the next row and are dropped); a filter of ``parity`` ±1 (symmetric or antisymmetric
    about its centre) uses the sums/differences ``pairs`` t[q + u] ± t[q + size - 1 - u]
    shared by all filters (half the multiplications).
    """
    ny, nx = t.shape
    n_f, size = filters.shape
    vx, c = nx - size + 1, size // 2
    flat = t.ravel()
    n_h = (ny - 1) * nx + vx
    for u in range(c):
        lo, hi = flat[u : u + n_h], flat[size - 1 - u : size - 1 - u + n_h]
        ps, ds = pairs[0, u, :n_h], pairs[1, u, :n_h]
        for q in range(n_h):
            ps[q] = lo[q] + hi[q]
            ds[q] = lo[q] - hi[q]
    out = tmp[:n_h]
    for f in range(n_f):
        out[:] = 0.0
        if parity[f] == 0:
            for u in range(size):
                _axpy(filters[f, u], flat[u : u + n_h], out)
        else:
            if parity[f] > 0:
                _axpy(filters[f, c], flat[c : c + n_h], out)
            for u in range(c):
                _axpy(filters[f, u], pairs[0 if parity[f] > 0 else 1, u, :n_h], out)
        for y in range(ny):
            h[f, y * vx : (y + 1) * vx] = out[y * nx : y * nx + vx]


@numba.njit(**JIT)
def _separable_columns(
    t, filters, parity, x_index, y_index, ptr, idx, val, scratch, c
):  # pragma: no cover - compiled
    """Design columns c[k, p] = (B_k ⋆ t)[p] from the separable terms (1-D passes)."""
    ny, nx = t.shape
    size = filters.shape[1]
    vy, vx = ny - size + 1, nx - size + 1
    pairs, tmp, h, raw = scratch
    _x_passes(t, filters, parity, pairs, tmp, h)
    n_r = vy * vx
    for r in range(x_index.size):  # y passes: raw[r, y·vx + x] = Σ_v g[v] h[f, (y+v)·vx + x]
        out, g, hf = raw[r], filters[y_index[r]], h[x_index[r]]
        out[:] = 0.0
        for v in range(size):
            _axpy(g[v], hf[v * vx : v * vx + n_r], out)
    for k in range(ptr.size - 1):
        c[k, :] = 0.0
        for q in range(ptr[k], ptr[k + 1]):
            _axpy(val[q], raw[idx[q]], c[k])


@numba.njit(**JIT)
def separable_normal_equations(
    templates,
    sciences,
    weights,
    rows,
    filters,
    parity,
    x_index,
    y_index,
    ptr,
    idx,
    val,
    fit_background,
):  # pragma: no cover - compiled
    """Normal equations M = CᵀWC, b = CᵀWd of the stamps ``rows`` for a separable basis.

    ``weights`` (n_rows, vy, vx) are 1/V over the valid region of each selected stamp;
    ``parity`` (n_filters,) is +1/-1 for (anti)symmetric filters, 0 otherwise;
    ``ptr``/``idx``/``val`` hold the basis-to-term mixing matrix in compressed rows. Returns
    m (n_rows, P, P), b (n_rows, P) with P = n_basis (+ 1 for the background column of ones).
    """
    size = filters.shape[1]
    ny, nx = templates.shape[1], templates.shape[2]
    vy, vx = ny - size + 1, nx - size + 1
    n_basis = ptr.size - 1
    n_par = n_basis + (1 if fit_background else 0)
    m = np.empty((rows.size, n_par, n_par))
    b = np.empty((rows.size, n_par))
    scratch = (
        np.empty((2, size // 2, ny * nx)),
        np.empty(ny * nx),
        np.empty((filters.shape[0], ny * vx)),
        np.empty((x_index.size, vy * vx)),
    )
    c = np.ones((n_par, vy * vx))
    data = np.empty(vy * vx)
    for i in range(rows.size):
        row = rows[i]
        _separable_columns(
            templates[row], filters, parity, x_index, y_index, ptr, idx, val, scratch, c
        )
        _valid_data(sciences[row], size, data)
        _accumulate(c, data, weights[i].ravel(), m[i], b[i])
    return m, b


@numba.njit(**JIT)
def _valid_data(s, size, data):  # pragma: no cover - compiled
    half = size // 2
    vy, vx = s.shape[0] - size + 1, s.shape[1] - size + 1
    for y in range(vy):
        for x in range(vx):
            data[y * vx + x] = s[y + half, x + half]


@numba.njit(**JIT)
def correlation_normal_equations(
    templates, sciences, weights, rows, basis, fit_background
):  # pragma: no cover - compiled
    """As :func:`separable_normal_equations` for any basis (n_basis, size, size): each column
    a direct 2-D correlation (size² taps per pixel)."""
    n_basis, size = basis.shape[0], basis.shape[1]
    ny, nx = templates.shape[1], templates.shape[2]
    vy, vx = ny - size + 1, nx - size + 1
    n_par = n_basis + (1 if fit_background else 0)
    m = np.empty((rows.size, n_par, n_par))
    b = np.empty((rows.size, n_par))
    c = np.ones((n_par, vy * vx))
    acc = np.empty(ny * nx)
    data = np.empty(vy * vx)
    n_out = (vy - 1) * nx + vx
    for i in range(rows.size):
        flat = templates[rows[i]].ravel()
        for k in range(n_basis):
            acc[:] = 0.0
            for v in range(size):
                _correlate_rows(flat[v * nx :], basis[k, v], 1, n_out, acc)
            for y in range(vy):
                for x in range(vx):
                    c[k, y * vx + x] = acc[y * nx + x]
        _valid_data(sciences[rows[i]], size, data)
        _accumulate(c, data, weights[i].ravel(), m[i], b[i])
    return m, b


@numba.njit(**JIT)
def lu_solve(m, b, tol):  # pragma: no cover - compiled
    """Solve m[i] x = b[i] by LU with partial pivoting, one system at a time.

    Returns (x (n, P), ok (n,)): ok is False where the pivots show a (numerically) singular
    matrix, |pivot|min <= tol · |pivot|max (x is then not meaningful).
    """
    n, p = b.shape
    x = np.empty((n, p))
    ok = np.ones(n, np.bool_)
    a = np.empty((p, p))
    r = np.empty(p)
    for i in range(n):
        a[:, :] = m[i]
        r[:] = b[i]
        pmin, pmax = np.inf, 0.0
        for k in range(p):
            piv = k
            best = abs(a[k, k])
            for j in range(k + 1, p):
                if abs(a[j, k]) > best:
                    best, piv = abs(a[j, k]), j
            if piv != k:
                for j in range(p):
                    a[k, j], a[piv, j] = a[piv, j], a[k, j]
                r[k], r[piv] = r[piv], r[k]
            pmin, pmax = min(pmin, best), max(pmax, best)
            if best == 0.0:
                continue
            for j in range(k + 1, p):
                f = a[j, k] / a[k, k]
                a[j, k] = f
                for q in range(k + 1, p):
                    a[j, q] -= f * a[k, q]
                r[j] -= f * r[k]
        if not (p > 0 and pmin > tol * pmax):
            ok[i] = False
            continue
        for k in range(p - 1, -1, -1):
            s = r[k]
            for q in range(k + 1, p):
                s -= a[k, q] * x[i, q]
            x[i, k] = s / a[k, k]
    return x, ok


@numba.njit(**JIT)
def diffim_stats(
    templates, sciences, var_t, var_s, keep, rows, kernels, backgrounds
):  # pragma: no cover - compiled
    """Mean and rms of z = D/σ per stamp (``candidate_diffim_stats`` for a batch).

    D = s - K ⋆ t - bg and σ² = var_s + K² ⋆ var_t over the valid region, on the pixels where
    ``keep`` (n, vy, vx) holds and 1/σ² is finite; ``kernels[i]``/``backgrounds[i]`` belong to
    stamp ``rows[i]``. rms uses n - 1; NaN when too few pixels remain.
    """
    size = kernels.shape[1]
    ny, nx = templates.shape[1], templates.shape[2]
    vy, vx = ny - size + 1, nx - size + 1
    half = size // 2
    n_out = (vy - 1) * nx + vx  # full-width rows (see _x_passes)
    mean = np.empty(rows.size)
    rms = np.empty(rows.size)
    conv = np.empty(n_out)
    cvar = np.empty(n_out)
    for i in range(rows.size):
        row = rows[i]
        k = kernels[i]
        t, vt = templates[row].ravel(), var_t[row].ravel()
        conv[:] = 0.0
        cvar[:] = 0.0
        for v in range(size):
            for u in range(size):
                o = v * nx + u
                _axpy(k[v, u], t[o : o + n_out], conv)
                _axpy(k[v, u] * k[v, u], vt[o : o + n_out], cvar)
        n, sz, szz = 0, 0.0, 0.0
        for y in range(vy):
            for x in range(vx):
                if keep[row, y, x]:
                    q = y * nx + x
                    ivar = 1.0 / (var_s[row, y + half, x + half] + cvar[q])
                    if np.isfinite(ivar):
                        d = sciences[row, y + half, x + half] - conv[q] - backgrounds[i]
                        z = d * np.sqrt(ivar)
                        n += 1
                        sz += z
                        szz += z * z
        mean[i] = sz / n if n > 0 else np.nan
        if n < 2:
            rms[i] = np.nan
        else:
            var = (szz / n - mean[i] * mean[i]) * n / (n - 1.0)
            rms[i] = np.sqrt(var) if var >= 0 else np.nan
    return mean, rms


@numba.njit(**JIT)
def combine_basis(coeffs, basis):  # pragma: no cover - compiled
    """Kernel images Σ_j coeffs[i, j] basis[j]: array of shape (n, size, size)."""
    n, n_basis = coeffs.shape
    out = np.zeros((n, basis.shape[1], basis.shape[2]))
    for i in range(n):
        for j in range(n_basis):
            a = coeffs[i, j]
            for v in range(basis.shape[1]):
                for u in range(basis.shape[2]):
                    out[i, v, u] += a * basis[j, v, u]
    return out
