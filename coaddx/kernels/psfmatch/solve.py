"""Normal equations of ip_diffim's PSF matching (algorithms.md 6.3, 6.4 step 4).

The single-kernel solution of one candidate (``StaticKernelSolution``) with its difference-image
statistics, and the spatial kernel (``SpatialKernelSolution``) built from the candidates'
normal equations; kernels and coefficients in afw's sense (conventions in
:mod:`coaddx.kernels.psfmatch`). The normal equations come from
:mod:`coaddx.kernels.psfmatch.stamps` (separable 1-D filters for Alard-Lupton bases).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from coaddx.kernels.psfmatch.basis import monomials
from coaddx.kernels.psfmatch.design import combine_basis, lu_solve
from coaddx.kernels.psfmatch.stamps import (
    BAD_VARIANCE,
    NON_FINITE,
    StampStack,
    box_or,
    core_box,
    correlate_valid,
    normal_equations,
)

__all__ = [
    "CandidateSolution",
    "SpatialKernel",
    "T_Model",
    "bbox_from_shape",
    "box_or",
    "candidate_diffim_stats",
    "mean_rms",
    "solve_candidate",
    "solve_normal_batch",
    "solve_spatial",
    "spatial_axis_values",
]

_EPS = float(np.finfo(np.float64).eps)

T_Model = Literal["chebyshev1", "polynomial"]

# ------------------------------------------------------------------- linear algebra helpers


def solve_normal_batch(m: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve M_i a_i = b_i for a stack (n, P, P), (n, P): LU with partial pivoting (compiled,
    no BLAS threads); eigen pseudo-inverse where the LU pivots show a (numerically) singular M.
    Returns (a (n, P), failed (n,) bool: the eigen decomposition did not converge).

    "Singular" follows Eigen's FullPivLU threshold (|pivot| <= P·eps·max|pivot|, partial
    pivoting here). The pseudo-inverse drops eigenvalues with |λ| <= P·eps·max|λ| (LSST drops
    only exact zeros, which leaves round-off eigenvalues to blow up).
    """
    m = np.ascontiguousarray(m, np.float64)
    b = np.ascontiguousarray(b, np.float64)
    n = m.shape[-1]
    with np.errstate(all="ignore"):
        x, ok = lu_solve(m, b, n * _EPS)
    failed = np.zeros(x.shape[0], bool)
    for i in np.flatnonzero(~ok):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w, v = np.linalg.eigh(0.5 * (m[i] + m[i].T))
        except np.linalg.LinAlgError:
            failed[i] = True
            continue
        keep = np.abs(w) > n * _EPS * np.abs(w).max(initial=0.0)
        inv = np.zeros_like(w)
        inv[keep] = 1.0 / w[keep]
        x[i] = v @ (inv * (v.T @ b[i]))
    return x, failed


def _solve_normal(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, failed = solve_normal_batch(m[None], b[None])
    if failed[0]:
        raise np.linalg.LinAlgError("eigen decomposition of the normal equations did not converge")
    return x[0]


# --------------------------------------------------------------- per-candidate solution (6.3)


@dataclass(frozen=True, eq=False)
class CandidateSolution:
    """Single-kernel solution of one candidate (KernelSolution).

    ``m``/``b`` are the normal equations actually solved (``m`` includes λH when regularised;
    LSST hands the same to the spatial fit); the last row/column is the background term when
    it was fitted. ``mean_z``/``rms_z`` are the diffim statistics once assessed.
    """

    coeffs: np.ndarray
    background: float
    kernel_sum: float
    m: np.ndarray
    b: np.ndarray
    kernel: np.ndarray
    variance: float | None  # constant weighting variance (None: per-pixel weights)
    lam: float = 0.0
    n_pixels: int = 0
    mean_z: float = math.nan
    rms_z: float = math.nan

    @property
    def M(self) -> np.ndarray:
        """Alias of ``m`` (the normal-equation matrix)."""
        return self.m

    def condition_number(self, kind: Literal["eigenvalue", "svd"] = "eigenvalue") -> float:
        """max/min |eigenvalue| (or singular value) of ``m`` (KernelSolution.getConditionNumber)."""
        vals = np.abs(
            np.linalg.eigvalsh(self.m)
            if kind == "eigenvalue"
            else np.linalg.svd(self.m, compute_uv=False)
        )
        return float(vals.max() / vals.min()) if vals.min() > 0 else math.inf


def solve_candidate(
    template: np.ndarray,
    science: np.ndarray,
    variance_template: np.ndarray,
    variance_science: np.ndarray,
    basis: np.ndarray,
    *,
    fit_background: bool = False,
    constant_variance: bool = True,
    regularization: np.ndarray | None = None,
    lam: float = 0.2,
    lam_type: Literal["absolute", "relative"] = "absolute",
    lam_scaling: float = 1e-4,
) -> CandidateSolution:
    """Fit ``science ≈ Σ_j a_j (B_j ⋆ template) + bg`` on one stamp (StaticKernelSolution).

    ``⋆`` is afw's correlation, so ``coeffs`` and ``kernel`` are afw's. Uses the stamp shrunk
    by the kernel footprint; weights 1/V with V = var_s + var_t, replaced by its median (1 if
    <= 0) when ``constant_variance``. Solves M a = b (M = CᵀWC, b = CᵀWI),
    or (M + λH) a = b with a regularisation matrix H (λ = ``lam``, or
    ``lam_scaling``·tr(M)/tr(H) for "relative"). Raises ValueError for non-finite pixels in the
    used region or a non-positive variance.
    """
    basis = np.asarray(basis, np.float64)
    t, s = np.asarray(template, np.float64), np.asarray(science, np.float64)
    size = basis.shape[-1]
    if t.shape != s.shape or min(t.shape) < size:
        raise ValueError(f"stamps {t.shape}/{s.shape} must match and exceed the kernel ({size})")
    stack = StampStack.from_planes([t], [s], [variance_template], [variance_science])
    eq = normal_equations(
        stack,
        np.zeros(1, np.intp),
        basis,
        fit_background=fit_background,
        constant_variance=constant_variance,
    )
    if eq.status[0] == BAD_VARIANCE:  # afw MIN is NaN-safe
        raise ValueError("variance estimate has pixels <= 0; cannot inverse-variance weight")
    if eq.status[0] == NON_FINITE:
        raise ValueError("non-finite pixels in the candidate's template, science or variance")
    m, rhs = eq.m[0], eq.b[0]
    lam_used = 0.0
    if regularization is not None:
        h = _pad_regularization(np.asarray(regularization, np.float64), m.shape[0])
        lam_used = lam if lam_type == "absolute" else lam_scaling * np.trace(m) / np.trace(h)
        m = m + lam_used * h
    a = _solve_normal(m, rhs)
    n_b = basis.shape[0]
    kernel = np.tensordot(a[:n_b], basis, axes=1)
    return CandidateSolution(
        a[:n_b],
        float(a[n_b]) if fit_background else 0.0,
        float(kernel.sum()),
        m,
        rhs,
        kernel,
        float(eq.variance[0]) if constant_variance else None,
        float(lam_used),
        eq.n_pixels,
    )


def _pad_regularization(h: np.ndarray, n: int) -> np.ndarray:
    if h.shape == (n, n):
        return h
    if h.shape == (n - 1, n - 1):  # background term left unregularised
        return np.pad(h, ((0, 1), (0, 1)))
    raise ValueError(f"regularization matrix {h.shape} does not match {n} parameters")


def candidate_diffim_stats(
    template: np.ndarray,
    science: np.ndarray,
    var_t: np.ndarray,
    var_s: np.ndarray,
    mask_t: np.ndarray | None,
    mask_s: np.ndarray | None,
    kernel: np.ndarray,
    background: float,
    *,
    bad_bits: int,
    core_radius: int | None = None,
) -> tuple[float, float]:
    """Mean and rms of z = D/σ on a candidate's difference image (ip_diffim ImageStatistics).

    D = science - K ⋆ template - background, σ² = var_s + K² ⋆ var_t (afw's correlation, K in
    afw's sense; the exact reference of :func:`~coaddx.kernels.psfmatch.stamps.stamp_stats`),
    mask = mask_s | OR of mask_t over the kernel footprint; only the stamp shrunk by the
    kernel footprint exists (afw's convolution edge is NO_DATA), restricted to the central
    (2r+1)² box when ``core_radius`` is given. Pixels with a ``bad_bits`` bit or non-finite
    1/σ² are skipped; rms uses n - 1. NaN when too few pixels remain (NaN pixel values
    propagate, as in LSST).
    """
    k = np.asarray(kernel, np.float64)
    half = k.shape[0] // 2
    s = np.asarray(science, np.float64)
    ny, nx = s.shape
    good = (slice(half, ny - half), slice(half, nx - half))
    shape = (ny - 2 * half, nx - 2 * half)
    conv = correlate_valid(np.asarray(template, np.float64), k[None]).reshape(shape)
    var_c = correlate_valid(np.asarray(var_t, np.float64), (k * k)[None]).reshape(shape)
    diff = s[good] - conv - background
    var = np.asarray(var_s, np.float64)[good] + var_c
    keep = np.ones(shape, bool)
    if bad_bits:
        mask = np.zeros(shape, np.int64)
        if mask_s is not None:
            mask |= np.asarray(mask_s)[good]
        if mask_t is not None:
            mask |= box_or(np.asarray(mask_t).astype(np.int64), half)[good]
        keep &= (mask & int(bad_bits)) == 0
    if core_radius is not None:
        core = np.zeros((ny, nx), bool)
        core[core_box((ny, nx), core_radius)] = True
        keep &= core[good]
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = 1.0 / var
        keep &= np.isfinite(ivar)
        z = diff[keep] * np.sqrt(ivar[keep])
    return mean_rms(z)


def mean_rms(z: np.ndarray) -> tuple[float, float]:
    n = z.size
    mean = float(z.sum() / n) if n > 0 else math.nan
    if n < 2:
        return mean, math.nan
    var = (float((z * z).sum()) / n - mean * mean) * n / (n - 1.0)
    return mean, math.sqrt(var) if var >= 0 else math.nan


# ------------------------------------------------------------------- spatial kernel (6.4 step 4)


def bbox_from_shape(
    shape: tuple[int, int], origin: tuple[float, float] = (0, 0)
) -> tuple[float, float, float, float]:
    """afw ``Box2D`` of the pixel box of an image of ``shape`` (ny, nx) at ``origin`` (x0, y0)."""
    return (
        origin[0] - 0.5,
        origin[1] - 0.5,
        origin[0] + shape[1] - 0.5,
        origin[1] + shape[0] - 0.5,
    )


def spatial_axis_values(t: np.ndarray, lo: float, hi: float, order: int, model: str) -> np.ndarray:
    """1-D spatial functions along one axis: array of shape (order + 1, *t.shape)."""
    t = np.asarray(t, np.float64)
    if model == "chebyshev1":
        tp = (2.0 * t - (lo + hi)) / (hi - lo)
        vander = np.polynomial.chebyshev.chebvander(tp, order)  # promotes 0-d to 1-d
        return np.moveaxis(vander, -1, 0).reshape((order + 1, *t.shape))
    if model == "polynomial":
        return np.stack([t**p for p in range(order + 1)])
    raise ValueError(f"model must be 'chebyshev1' or 'polynomial', got {model!r}")


def _spatial_terms(x, y, order: int, model: str, bbox) -> np.ndarray:
    """f_m(x, y) for the (order+1)(order+2)/2 terms: array of shape (n_terms, *broadcast shape)."""
    vx = spatial_axis_values(x, bbox[0], bbox[2], order, model)
    vy = spatial_axis_values(y, bbox[1], bbox[3], order, model)
    return np.stack([vx[px] * vy[py] for px, py in monomials(order)])


@dataclass(frozen=True, eq=False)
class SpatialKernel:
    """K(x, y) = Σ_j c_j(x, y) B_j with c_j(x, y) = Σ_m coeffs[j, m] f_m(x, y), in afw's sense.

    As afw's LinearCombinationKernel: ``basis``, ``coeffs``, :meth:`coefficients` and
    :meth:`kernel_image` are the ones ip_diffim fits and afw's ``convolve`` applies as a
    correlation, ``out[y, x] = Σ K[c+v, c+u] in[y+v, x+u]``. ``coeffs`` has shape
    (n_basis, n_spatial); with ``constant_first_term`` only ``coeffs[0, 0]`` of the first row
    is non-zero. ``bg_coeffs`` (n_bg,) or None.
    """

    basis: np.ndarray
    coeffs: np.ndarray
    bg_coeffs: np.ndarray | None
    spatial_order: int
    bg_order: int
    model: T_Model
    bbox: tuple[float, float, float, float]
    constant_first_term: bool = True

    @property
    def size(self) -> int:
        """Kernel width (= height) in pixels."""
        return int(self.basis.shape[-1])

    def coefficients(self, x, y) -> np.ndarray:
        """c_j(x, y): array of shape (n_basis, *broadcast(x, y).shape)."""
        f = _spatial_terms(x, y, self.spatial_order, self.model, self.bbox)
        return np.tensordot(self.coeffs, f, axes=1)

    def term_images(self) -> np.ndarray:
        """The convolution's term images, array of shape (n_spatial, k, k).

        A_m = (Σ_j coeffs[j, m] B_j) rotated by 180°, so that applying K(x, y) in afw's sense
        is the true convolution (``scipy.signal.convolve``) Σ_m f_m(x, y) (A_m ⊗ image), and
        ``kernel_image(x, y) == Σ_m f_m(x, y) A_m[::-1, ::-1]``. This is what
        :mod:`coaddx.kernels.psfmatch.convolve` convolves with.
        """
        return np.ascontiguousarray(np.tensordot(self.coeffs.T, self.basis, axes=1)[:, ::-1, ::-1])

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        """The (size, size) kernel image at (x, y), afw's (``computeImage``)."""
        return np.tensordot(self.coefficients(float(x), float(y)), self.basis, axes=1)

    def kernel_images(self, x, y) -> np.ndarray:
        """Kernel images at the points (x, y) (1-D arrays): array of shape (n, size, size)."""
        c = self.coefficients(np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel())
        return combine_basis(np.ascontiguousarray(c.T), np.ascontiguousarray(self.basis))

    def kernel_sum(self, x, y):
        """Σ over pixels of K(x, y) (float for scalars, array otherwise)."""
        out = np.tensordot(self.coefficients(x, y), self.basis.sum(axis=(1, 2)), axes=(0, 0))
        return float(out) if np.ndim(out) == 0 else out

    def background(self, x, y):
        """Spatial background at (x, y); 0 when no background was fitted."""
        if self.bg_coeffs is None:
            shape = np.broadcast(x, y).shape
            return np.zeros(shape) if shape else 0.0
        f = _spatial_terms(x, y, self.bg_order, self.model, self.bbox)
        out = np.tensordot(self.bg_coeffs, f, axes=1)
        return float(out) if np.ndim(out) == 0 else out

    def with_kernel_sum(self, kernel_sum: float) -> SpatialKernel:
        """Force the constant coefficient of B_0 (ModelPsfMatchTask's ``kernelSum``, 6.5 step 5).

        The kernel sum equals it everywhere when the other bases have zero sum (AL, PCA) and
        the first term is constant.
        """
        coeffs = self.coeffs.copy()
        coeffs[0, 0] = kernel_sum
        return replace(self, coeffs=coeffs)


def _accumulate_spatial(
    q: np.ndarray, w: np.ndarray, pk: np.ndarray, pb: np.ndarray | None, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_c Pᵀ Q_c P and Σ_c Pᵀ w_c with every basis spatially varying (blocks of Q_jk p pᵀ).

    Parameter index ``j * n_kt + m`` for kernel terms, then the background terms.
    """
    n_c, n_kt = pk.shape
    pp = (pk[:, :, None] * pk[:, None, :]).reshape(n_c, -1)
    kk = np.tensordot(q[:, :n_b, :n_b].reshape(n_c, -1), pp, axes=(0, 0))
    kk = kk.reshape(n_b, n_b, n_kt, n_kt).transpose(0, 2, 1, 3).reshape(n_b * n_kt, n_b * n_kt)
    rhs = np.tensordot(w[:, :n_b], pk, axes=(0, 0)).reshape(-1)
    if pb is None:
        return kk, rhs
    n_bt = pb.shape[1]
    pkb = (pk[:, :, None] * pb[:, None, :]).reshape(n_c, -1)
    kb = np.tensordot(q[:, :n_b, n_b], pkb, axes=(0, 0)).reshape(n_b * n_kt, n_bt)
    bb = np.tensordot(q[:, n_b, n_b], pb[:, :, None] * pb[:, None, :], axes=(0, 0))
    m = np.block([[kk, kb], [kb.T, bb]])
    return m, np.concatenate([rhs, pb.T @ w[:, n_b]])


def solve_spatial(
    candidates: Sequence[CandidateSolution],
    positions: np.ndarray,
    basis: np.ndarray,
    *,
    spatial_order: int = 2,
    bg_order: int = 1,
    model: T_Model = "chebyshev1",
    bbox: tuple[float, float, float, float],
    fit_background: bool = False,
    constant_first_term: bool = True,
    kernel_sum: float | None = None,
) -> SpatialKernel:
    """Spatial kernel from the candidates' normal equations (SpatialKernelSolution).

    Each candidate at (x_c, y_c) adds Pᵀ M_c P and Pᵀ b_c where P maps the spatial parameters
    to its local coefficients (a_j = Σ_m θ_jm f_m(x_c, y_c); background likewise), i.e. the
    blocks M_jk p pᵀ of LSST; with ``constant_first_term`` basis 0 only has its constant term:
    (n_basis - 1)·n_kt + 1 (+ n_bt) unknowns. Solved by LU with the eigen pseudo-inverse
    fallback.

    ``kernel_sum`` (needs ``constant_first_term``) fixes the constant coefficient of B_0, i.e.
    the kernel sum, BEFORE solving for the other unknowns (a constrained least-squares fit);
    LSST's ModelPsfMatchTask instead overwrites it after a free fit
    (:meth:`SpatialKernel.with_kernel_sum`), which rescales only the narrowest Gaussian and so
    changes the kernel's width (docs/design-notes.md).
    """
    if len(candidates) == 0:
        raise ValueError("no kernel candidates for the spatial fit")
    basis = np.asarray(basis, np.float64)
    n_b, n_local = basis.shape[0], basis.shape[0] + int(fit_background)
    pos = np.asarray(positions, np.float64).reshape(-1, 2)
    q, w = np.stack([c.m for c in candidates]), np.stack([c.b for c in candidates])
    if q.shape[1:] != (n_local, n_local) or pos.shape[0] != q.shape[0]:
        raise ValueError(
            f"candidates have {q.shape[1]} parameters and {pos.shape[0]} positions "
            f"for {q.shape[0]} candidates; expected {n_local} parameters"
        )
    pk = _spatial_terms(pos[:, 0], pos[:, 1], spatial_order, model, bbox).T
    pb = _spatial_terms(pos[:, 0], pos[:, 1], bg_order, model, bbox).T if fit_background else None
    m, rhs = _accumulate_spatial(q, w, pk, pb, n_b)
    n_kt = pk.shape[1]
    free = np.ones(m.shape[0], bool)
    if constant_first_term:
        free[1:n_kt] = False
    sol = np.zeros(m.shape[0])
    if kernel_sum is not None:
        if not constant_first_term:
            raise ValueError("kernel_sum needs constant_first_term (a spatially constant B_0)")
        free[0], sol[0] = False, float(kernel_sum)
        rhs = rhs - m[:, 0] * sol[0]
    sol[free] = _solve_normal(m[np.ix_(free, free)], rhs[free])
    return SpatialKernel(
        basis,
        sol[: n_b * n_kt].reshape(n_b, n_kt),
        sol[n_b * n_kt :].copy() if fit_background else None,
        spatial_order,
        bg_order,
        model,
        (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
        constant_first_term,
    )
