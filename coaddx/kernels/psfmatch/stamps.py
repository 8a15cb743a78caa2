"""Candidate stamps stacked for the compiled fit (algorithms.md 6.3, 6.4): their normal
equations and difference-image statistics, a batch of stamps per call.

A :class:`StampStack` holds stamps of one shape as (n, ny, nx) planes. The normal equations use
the separable form of an Alard-Lupton basis (:func:`~coaddx.kernels.psfmatch.basis.separable_basis`:
two 1-D passes per term), direct correlations for other small bases and one matrix product
per stamp for large ones (delta functions); afw's correlation sense throughout (see
:mod:`coaddx.kernels.psfmatch`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from coaddx.kernels.psfmatch.basis import SeparableBasis, separable_basis
from coaddx.kernels.psfmatch.design import (
    correlation_normal_equations,
    diffim_stats,
    separable_normal_equations,
)

__all__ = [
    "BAD_VARIANCE",
    "NON_FINITE",
    "OK",
    "NormalEquations",
    "StampStack",
    "box_or",
    "core_box",
    "correlate_valid",
    "default_threads",
    "keep_mask",
    "normal_equations",
    "stamp_stats",
]

OK, BAD_VARIANCE, NON_FINITE = 0, 1, 2  # NormalEquations.status
_DIRECT_MAX_BASIS = 64  # larger bases (delta functions): one matrix product per stamp
_MIN_CHUNK = 64  # stamps per thread at least


def default_threads() -> int:
    """Threads of the batched kernels by default: the CPUs visible, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def _in_threads(
    fn: Callable[[np.ndarray], tuple[np.ndarray, ...]], n: int, threads: int | None
) -> tuple[np.ndarray, ...]:
    """fn over contiguous chunks of range(n) in ``threads`` threads (the compiled kernels
    release the GIL), its outputs concatenated along axis 0."""
    k = min(default_threads() if threads is None else max(int(threads), 1), n // _MIN_CHUNK)
    if k <= 1:
        return fn(np.arange(n))
    chunks = np.array_split(np.arange(n), k)
    with ThreadPoolExecutor(k) as pool:
        parts = list(pool.map(fn, chunks))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def correlate_valid(stamp: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Columns ``(K_j ⋆ stamp)`` (afw's correlation) over the valid region, as an
    (n_valid, n_kernels) matrix: exact direct sums through one matrix product (the reference)."""
    size = kernels.shape[-1]
    windows = sliding_window_view(stamp, (size, size))
    return windows.reshape(-1, size * size) @ kernels.reshape(kernels.shape[0], -1).T


def core_box(shape: tuple[int, ...], radius: int) -> tuple[slice, slice]:
    """Slices of the central (2·radius+1)² box of a stamp of ``shape`` (clipped at the edge)."""
    cy, cx = shape[-2] // 2, shape[-1] // 2
    return (
        slice(max(0, cy - radius), cy + radius + 1),
        slice(max(0, cx - radius), cx + radius + 1),
    )


def box_or(mask: np.ndarray, half: int) -> np.ndarray:
    """Bitwise OR (or logical OR for bool) over the (2·half+1)² box around every pixel of the
    last two axes."""
    rows = mask.copy()
    for d in range(1, half + 1):
        rows[..., d:] |= mask[..., :-d]
        rows[..., :-d] |= mask[..., d:]
    out = rows.copy()
    for d in range(1, half + 1):
        out[..., d:, :] |= rows[..., :-d, :]
        out[..., :-d, :] |= rows[..., d:, :]
    return out


@dataclass(frozen=True, eq=False)
class StampStack:
    """Stamps of one shape: float64 planes of shape (n, ny, nx); integer masks or None."""

    template: np.ndarray
    science: np.ndarray
    variance_template: np.ndarray
    variance_science: np.ndarray
    mask_template: np.ndarray | None = None
    mask_science: np.ndarray | None = None

    @classmethod
    def from_planes(
        cls,
        template: Sequence[np.ndarray],
        science: Sequence[np.ndarray],
        variance_template: Sequence[np.ndarray],
        variance_science: Sequence[np.ndarray],
        mask_template: Sequence[np.ndarray | None] | None = None,
        mask_science: Sequence[np.ndarray | None] | None = None,
    ) -> StampStack:
        """Stack per-stamp planes (all of one shape); a mask list of all None becomes None."""

        def planes(p: Sequence[np.ndarray]) -> np.ndarray:
            return np.ascontiguousarray(np.stack([np.asarray(a) for a in p]), dtype=np.float64)

        def masks(p: Sequence[np.ndarray | None] | None) -> np.ndarray | None:
            if p is None or all(a is None for a in p):
                return None
            shape = np.shape(next(a for a in p if a is not None))
            return np.stack([np.zeros(shape, np.int32) if a is None else np.asarray(a) for a in p])

        out = cls(
            planes(template),
            planes(science),
            planes(variance_template),
            planes(variance_science),
            masks(mask_template),
            masks(mask_science),
        )
        shapes = {a.shape for a in (out.template, out.science, out.variance_template)}
        if len(shapes | {out.variance_science.shape}) != 1:
            raise ValueError(f"stamp planes differ in shape: {sorted(shapes)}")
        return out

    def __len__(self) -> int:
        return int(self.template.shape[0])


@dataclass(frozen=True, eq=False)
class NormalEquations:
    """Per selected stamp: M (n, P, P), b (n, P), the constant weighting variance (NaN for
    per-pixel weights), a status (OK, BAD_VARIANCE, NON_FINITE; M and b are zero where not OK)
    and the number of pixels fitted."""

    m: np.ndarray
    b: np.ndarray
    variance: np.ndarray
    status: np.ndarray
    n_pixels: int


def _weights(stack: StampStack, rows: np.ndarray, half: int, constant: bool):
    var = stack.variance_science[rows] + stack.variance_template[rows]
    good = (slice(None), slice(half, var.shape[1] - half), slice(half, var.shape[2] - half))
    status = np.zeros(rows.size, np.int8)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stamps
        if constant:
            flat = var.reshape(rows.size, -1)
            nan = np.isnan(flat).any(axis=1)
            med = np.empty(rows.size)
            med[~nan] = np.median(flat[~nan], axis=1)
            med[nan] = np.nanmedian(flat[nan], axis=1) if nan.any() else 0.0
            level = np.where(med > 0, med, 1.0)
            weight = np.broadcast_to((1.0 / level)[:, None, None], var[good].shape).copy()
            return weight, level, status
        status[~(np.nanmin(var.reshape(rows.size, -1), axis=1) > 0)] = BAD_VARIANCE
        return 1.0 / var[good], np.full(rows.size, np.nan), status


def _mixing(form: SeparableBasis) -> tuple[np.ndarray, ...]:
    """(parity of the filters, the mixing matrix as compressed rows: ptr, idx, val)."""
    f = form.filters
    parity = np.where(
        np.array_equal(f, f) & (f == f[:, ::-1]).all(axis=1),
        1,
        np.where((f == -f[:, ::-1]).all(axis=1), -1, 0),
    ).astype(np.int8)
    nz = form.mix != 0.0
    ptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.intp)
    return parity, ptr, np.nonzero(nz)[1].astype(np.intp), form.mix[nz]


def normal_equations(
    stack: StampStack,
    rows: np.ndarray,
    basis: np.ndarray,
    *,
    fit_background: bool,
    constant_variance: bool,
    threads: int | None = 1,
) -> NormalEquations:
    """M = CᵀWC and b = CᵀWd of the stamps ``rows`` of ``stack`` (StaticKernelSolution).

    C holds the columns B_j ⋆ template (and ones for the background) over the valid region, d
    the science pixels there, W = 1/V with V = var_s + var_t, replaced by the stamp's median (1
    if <= 0) for ``constant_variance``. A stamp with a non-finite template pixel, science or
    weight pixel in use gets status NON_FINITE; a per-pixel variance <= 0 gets BAD_VARIANCE.
    ``threads`` (None: :func:`default_threads`) split the stamps between threads.
    """
    rows = np.asarray(rows, np.intp).reshape(-1)
    basis = np.ascontiguousarray(basis, np.float64)
    size, n_b = basis.shape[-1], basis.shape[0]
    half = size // 2
    ny, nx = stack.template.shape[1:]
    if min(ny, nx) < size:
        raise ValueError(f"stamps {(ny, nx)} must exceed the kernel ({size})")
    weight, level, status = _weights(stack, rows, half, constant_variance)
    sci = stack.science[rows, half : ny - half, half : nx - half]
    finite = (
        np.isfinite(stack.template[rows]).all(axis=(1, 2))
        & np.isfinite(sci).all(axis=(1, 2))
        & np.isfinite(weight).all(axis=(1, 2))
    )
    status[(status == OK) & ~finite] = NON_FINITE
    n_par = n_b + int(fit_background)
    m, b = np.zeros((rows.size, n_par, n_par)), np.zeros((rows.size, n_par))
    use = np.flatnonzero(status == OK)
    if use.size:
        form = separable_basis(basis)
        if form is not None:
            parity, ptr, idx, val = _mixing(form)
            w_use, r_use = weight[use], rows[use]
            m[use], b[use] = _in_threads(
                lambda sel: separable_normal_equations(
                    stack.template,
                    stack.science,
                    w_use[sel],
                    r_use[sel],
                    form.filters,
                    parity,
                    form.x_index,
                    form.y_index,
                    ptr,
                    idx,
                    val,
                    fit_background,
                ),
                use.size,
                threads,
            )
        elif n_b <= _DIRECT_MAX_BASIS:
            w_use, r_use = weight[use], rows[use]
            m[use], b[use] = _in_threads(
                lambda sel: correlation_normal_equations(
                    stack.template, stack.science, w_use[sel], r_use[sel], basis, fit_background
                ),
                use.size,
                threads,
            )
        else:
            for i in use:
                design = correlate_valid(stack.template[rows[i]], basis)
                if fit_background:
                    design = np.column_stack([design, np.ones(design.shape[0])])
                w = weight[i].ravel()
                m[i] = design.T @ (design * w[:, None])
                b[i] = design.T @ (w * sci[i].ravel())
    return NormalEquations(m, b, level, status, (ny - 2 * half) * (nx - 2 * half))


def keep_mask(
    stack: StampStack, half: int, *, bad_bits: int, core_radius: int | None = None
) -> np.ndarray:
    """Pixels of the valid region that enter the statistics, (n, ny - 2·half, nx - 2·half) bool:
    no ``bad_bits`` bit in the science mask nor in the template mask over the kernel footprint,
    and inside the central (2r+1)² box when ``core_radius`` is given."""
    n, ny, nx = stack.template.shape
    good = (slice(None), slice(half, ny - half), slice(half, nx - half))
    keep = np.ones((n, ny - 2 * half, nx - 2 * half), bool)
    if bad_bits:
        if stack.mask_science is not None:
            keep &= (stack.mask_science[good] & int(bad_bits)) == 0
        if stack.mask_template is not None:
            bad = (stack.mask_template & int(bad_bits)) != 0
            some = np.flatnonzero(bad.any(axis=(1, 2)))
            if some.size:
                keep[some] &= ~box_or(bad[some], half)[good]
    if core_radius is not None:
        core = np.zeros((ny, nx), bool)
        core[core_box((ny, nx), core_radius)] = True
        keep &= core[good[1:]]
    return keep


def stamp_stats(
    stack: StampStack,
    rows: np.ndarray,
    kernels: np.ndarray,
    backgrounds: np.ndarray,
    keep: np.ndarray,
    *,
    threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and rms of z = D/σ of the stamps ``rows`` with their kernels (n, k, k) in afw's
    sense and backgrounds (n,): :func:`~coaddx.kernels.psfmatch.solve.candidate_diffim_stats`
    for a batch, ``keep`` from :func:`keep_mask`."""
    rows = np.asarray(rows, np.intp).reshape(-1)
    kernels = np.ascontiguousarray(kernels, np.float64)
    bg = np.ascontiguousarray(np.broadcast_to(np.asarray(backgrounds, np.float64), rows.shape))
    mean, rms = _in_threads(
        lambda sel: diffim_stats(
            stack.template,
            stack.science,
            stack.variance_template,
            stack.variance_science,
            keep,
            rows[sel],
            kernels[sel],
            bg[sel],
        ),
        rows.size,
        threads,
    )
    return mean, rms
