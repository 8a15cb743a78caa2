"""PSF-matching kernels of ip_diffim (algorithms.md 6.2-6.5), on numpy/scipy only.

The per-candidate normal equations, the spatial (Chebyshev or polynomial) kernel fit, the
candidate-rejection loop of ``PsfMatchTask._solve`` and the spatially varying convolution.
The bases and the regularisation matrix live in :mod:`coaddx.kernels.psfbasis` and are
re-exported here.

Conventions
-----------
* Arrays are (row, column) = (y, x); positions, ``origin`` and ``bbox`` are (x, y).
* Kernels are odd-sized squares centred on ``(size // 2, size // 2)``. ``K ⊗ T`` is a true
  convolution, ``(K ⊗ T)[y, x] = Σ_{v,u} K[c+v, c+u] T[y-v, x-u]`` (``scipy.signal.convolve``);
  for the symmetric kernels of practice this is also afw's sense.
* ``bbox = (x0, y0, x1, y1)`` is the continuous range that the spatial functions map onto
  [-1, 1]; afw's ``Box2D(Box2I)`` of an image of width W starting at pixel 0 is
  ``(-0.5, -0.5, W - 0.5, H - 0.5)`` (see :func:`bbox_from_shape`).
* Spatial terms follow afw ``PolynomialFunction2`` order (1, x, y, x², xy, y², ...);
  ``"chebyshev1"`` uses T_i(x')T_j(y') of the mapped coordinates, ``"polynomial"`` raw x^i y^j
  of the pixel coordinates, as in afw.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import scipy.fft
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from .psfbasis import (
    SIGMA_TO_FWHM,
    alard_lupton_basis,
    alard_lupton_sigmas,
    delta_function_basis,
    kernel_norm_matrix,
    monomials,
    regularization_matrix,
    renormalize_basis,
)

__all__ = [
    "SIGMA_TO_FWHM",
    "CandidateSolution",
    "CandidateStamp",
    "FitInfo",
    "SpatialKernel",
    "alard_lupton_basis",
    "alard_lupton_sigmas",
    "bbox_from_shape",
    "candidate_diffim_stats",
    "delta_function_basis",
    "fit_psf_matching_kernel",
    "kernel_norm_matrix",
    "regularization_matrix",
    "renormalize_basis",
    "solve_candidate",
    "solve_spatial",
]

_EPS = float(np.finfo(np.float64).eps)

T_Model = Literal["chebyshev1", "polynomial"]

# ------------------------------------------------------------------- linear algebra helpers


def _solve_normal(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LU solve; eigen pseudo-inverse when the LU pivots show a (numerically) singular M.

    "Singular" follows Eigen's FullPivLU threshold (|pivot| <= n·eps·max|pivot|, partial
    pivoting here). The pseudo-inverse drops eigenvalues with |λ| <= n·eps·max|λ| (LSST drops
    only exact zeros, which leaves round-off eigenvalues to blow up).
    """
    n = m.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lu, piv = scipy.linalg.lu_factor(m, check_finite=False)
    pivots = np.abs(np.diag(lu))
    if n and pivots.min() > n * _EPS * pivots.max():
        return scipy.linalg.lu_solve((lu, piv), b, check_finite=False)
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    keep = np.abs(w) > n * _EPS * np.abs(w).max(initial=0.0)
    inv = np.zeros_like(w)
    inv[keep] = 1.0 / w[keep]
    return v @ (inv * (v.T @ b))


def _convolve_valid(stamp: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Columns ``(K_j ⊗ stamp)`` over the valid region, as an (n_valid, n_kernels) matrix.

    The valid region is the stamp shrunk by the kernel footprint (half-width on every side);
    exact (direct sums through one matrix product, no FFT).
    """
    size = kernels.shape[-1]
    windows = sliding_window_view(stamp, (size, size))
    flipped = np.ascontiguousarray(kernels[:, ::-1, ::-1].reshape(kernels.shape[0], -1).T)
    return windows.reshape(-1, size * size) @ flipped


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


def _variance_estimate(var_t: np.ndarray, var_s: np.ndarray, constant: bool) -> np.ndarray:
    var = np.asarray(var_s, np.float64) + np.asarray(var_t, np.float64)
    if constant:
        med = float(np.nanmedian(var)) if np.isfinite(var).any() else math.nan
        var = np.full_like(var, med if med > 0 else 1.0)
    elif not (np.nanmin(var) > 0):  # afw MIN is NaN-safe
        raise ValueError("variance estimate has pixels <= 0; cannot inverse-variance weight")
    return var


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
    """Fit ``science ≈ Σ_j a_j (B_j ⊗ template) + bg`` on one stamp (StaticKernelSolution).

    Uses the stamp shrunk by the kernel footprint; weights 1/V with V = var_s + var_t, replaced
    by its median (1 if <= 0) when ``constant_variance``. Solves M a = b (M = CᵀWC, b = CᵀWI),
    or (M + λH) a = b with a regularisation matrix H (λ = ``lam``, or
    ``lam_scaling``·tr(M)/tr(H) for "relative"). Raises ValueError for non-finite pixels in the
    used region or a non-positive variance.
    """
    basis = np.asarray(basis, np.float64)
    t, s = np.asarray(template, np.float64), np.asarray(science, np.float64)
    size, half = basis.shape[-1], basis.shape[-1] // 2
    if t.shape != s.shape or min(t.shape) < size:
        raise ValueError(f"stamps {t.shape}/{s.shape} must match and exceed the kernel ({size})")
    var = _variance_estimate(variance_template, variance_science, constant_variance)
    good = (slice(half, t.shape[0] - half), slice(half, t.shape[1] - half))
    design = _convolve_valid(t, basis)
    if fit_background:
        design = np.column_stack([design, np.ones(design.shape[0])])
    data, weight = s[good].ravel(), 1.0 / var[good].ravel()
    if not (np.isfinite(design).all() and np.isfinite(data).all() and np.isfinite(weight).all()):
        raise ValueError("non-finite pixels in the candidate's template, science or variance")
    m = design.T @ (design * weight[:, None])
    rhs = design.T @ (weight * data)
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
        float(var.flat[0]) if constant_variance else None,
        float(lam_used),
        data.size,
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

    D = science - K ⊗ template - background, σ² = var_s + K² ⊗ var_t, mask = mask_s | OR of
    mask_t over the kernel footprint; only the stamp shrunk by the kernel footprint exists
    (afw's convolution edge is NO_DATA), restricted to the central (2r+1)² box when
    ``core_radius`` is given. Pixels with a ``bad_bits`` bit or non-finite 1/σ² are skipped;
    rms uses n - 1. NaN when too few pixels remain (NaN pixel values propagate, as in LSST).
    """
    k = np.asarray(kernel, np.float64)
    half = k.shape[0] // 2
    s = np.asarray(science, np.float64)
    ny, nx = s.shape
    good = (slice(half, ny - half), slice(half, nx - half))
    shape = (ny - 2 * half, nx - 2 * half)
    conv = _convolve_valid(np.asarray(template, np.float64), k[None]).reshape(shape)
    var_c = _convolve_valid(np.asarray(var_t, np.float64), (k * k)[None]).reshape(shape)
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
        core[
            max(0, ny // 2 - core_radius) : ny // 2 + core_radius + 1,
            max(0, nx // 2 - core_radius) : nx // 2 + core_radius + 1,
        ] = True
        keep &= core[good]
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = 1.0 / var
        keep &= np.isfinite(ivar)
        z = diff[keep] * np.sqrt(ivar[keep])
    return _mean_rms(z)


def _mean_rms(z: np.ndarray) -> tuple[float, float]:
    n = z.size
    mean = float(z.sum() / n) if n > 0 else math.nan
    if n < 2:
        return mean, math.nan
    var = (float((z * z).sum()) / n - mean * mean) * n / (n - 1.0)
    return mean, math.sqrt(var) if var >= 0 else math.nan


def box_or(mask: np.ndarray, half: int) -> np.ndarray:
    """Bitwise OR (or logical OR for bool) over the (2·half+1)² box around every pixel."""
    rows = mask.copy()
    for d in range(1, half + 1):
        rows[:, d:] |= mask[:, :-d]
        rows[:, :-d] |= mask[:, d:]
    out = rows.copy()
    for d in range(1, half + 1):
        out[d:, :] |= rows[:-d, :]
        out[:-d, :] |= rows[d:, :]
    return out


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
    """K(x, y) = Σ_j c_j(x, y) B_j with c_j(x, y) = Σ_m coeffs[j, m] f_m(x, y).

    ``coeffs`` has shape (n_basis, n_spatial); with ``constant_first_term`` only
    ``coeffs[0, 0]`` of the first row is non-zero. ``bg_coeffs`` (n_bg,) or None.
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
        """A_m = Σ_j coeffs[j, m] B_j, so that K(x, y) = Σ_m f_m(x, y) A_m: (n_spatial, k, k)."""
        return np.tensordot(self.coeffs.T, self.basis, axes=1)

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        """The (size, size) kernel image at (x, y)."""
        return np.tensordot(self.coefficients(float(x), float(y)), self.basis, axes=1)

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
        tuple(float(v) for v in bbox),
        constant_first_term,
    )


# ------------------------------------------------------------------- the rejection loop (6.4)


@dataclass(frozen=True, eq=False)
class CandidateStamp:
    """A kernel candidate: template and science stamps centred on a star at parent (x, y).

    ``rating`` ranks candidates within a cell (highest first); None means LSST's
    KernelCandidate rating, the mean S/N of the science stamp's central (2r+1)² box.
    """

    x: float
    y: float
    template: np.ndarray
    science: np.ndarray
    variance_template: np.ndarray
    variance_science: np.ndarray
    mask_template: np.ndarray | None = None
    mask_science: np.ndarray | None = None
    rating: float | None = None


@dataclass(frozen=True, eq=False)
class FitInfo:
    """Outcome of :func:`fit_psf_matching_kernel`.

    ``status`` per stamp: "good" (used by the final spatial fit), "bad" (rejected) or "unused"
    (never visited: beyond ``n_star_per_cell`` good candidates of its cell). ``solutions``: the
    most recent single-kernel solution per stamp (None if never built).
    """

    status: tuple[str, ...]
    solutions: tuple[CandidateSolution | None, ...]
    basis: np.ndarray
    n_iterations: int
    n_restarts: int
    ksum_mean: float
    ksum_std: float
    converged: bool
    n_used: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


def _clip_mean_std(values: np.ndarray, nsigma: float = 3.0, niter: int = 3) -> tuple[float, float]:
    """afw MEANCLIP and STDEVCLIP of a 1-D sample (unweighted, non-cumulative passes).

    Pass 0 clips around the median at nsigma·0.7413·IQR, later passes around the previous
    clipped mean at nsigma·(clipped std); one value gives (value, 0) as in KernelSumVisitor.
    """
    x = np.asarray(values, np.float64)
    if x.size == 1:
        return float(x[0]), 0.0
    q1, center, q3 = np.percentile(x, [25.0, 50.0, 75.0])
    half = nsigma * 0.741301109252802 * (q3 - q1)
    mean = std = math.nan
    for _ in range(niter):
        kept = x[np.abs(x - center) <= half]  # NaN half keeps nothing, as in afw
        if kept.size == 0:
            return math.nan, math.nan
        mean = center = float(kept.mean())
        std = float(kept.std(ddof=1)) if kept.size > 1 else math.nan
        half = nsigma * std
    return mean, std


@dataclass(frozen=True)
class _Options:
    fit_background: bool
    constant_variance: bool
    regularization: np.ndarray | None
    lam: float
    single_clip: bool
    mean_max: float
    std_max: float
    core_radius: int | None
    bad_bits: int
    max_condition: float | None


class _Loop:
    """Mutable candidate bookkeeping of the 6.4 loop (SpatialCellSet + visitors)."""

    UNKNOWN, GOOD, BAD = 0, 1, 2

    def __init__(self, stamps, cells, n_per_cell, opts):
        self.stamps, self.cells, self.n_per_cell, self.opts = stamps, cells, n_per_cell, opts
        self.status = np.zeros(len(stamps), np.int8)
        self.orig: list[CandidateSolution | None] = [None] * len(stamps)
        self.recent: list[CandidateSolution | None] = [None] * len(stamps)
        self.rejections = {"single": 0, "kernel_sum": 0, "pca": 0, "spatial": 0}

    def visited(self) -> np.ndarray:
        """The first ``n_per_cell`` non-BAD candidates of every cell (rating order)."""
        out = []
        for cell in self.cells:
            ok = cell[self.status[cell] != self.BAD]
            out.extend(ok if self.n_per_cell < 0 else ok[: self.n_per_cell])
        return np.array(sorted(out), dtype=np.intp)

    def _fit(self, i: int, basis: np.ndarray, regularize: bool) -> CandidateSolution | None:
        st, o = self.stamps[i], self.opts
        try:
            sol = solve_candidate(
                st.template,
                st.science,
                st.variance_template,
                st.variance_science,
                basis,
                fit_background=o.fit_background,
                constant_variance=o.constant_variance,
                regularization=o.regularization if regularize else None,
                lam=o.lam,
            )
        except (ValueError, np.linalg.LinAlgError):
            return None
        if o.max_condition is not None and sol.condition_number() > o.max_condition:
            return None
        mean, rms = self.stats(i, sol.kernel, sol.background)
        return replace(sol, mean_z=mean, rms_z=rms)

    def stats(self, i: int, kernel: np.ndarray, background: float) -> tuple[float, float]:
        st, o = self.stamps[i], self.opts
        return candidate_diffim_stats(
            st.template,
            st.science,
            st.variance_template,
            st.variance_science,
            st.mask_template,
            st.mask_science,
            kernel,
            background,
            bad_bits=o.bad_bits,
            core_radius=o.core_radius,
        )

    def _judge(self, mean: float, rms: float, clip: bool) -> bool:
        if not (math.isfinite(mean) and math.isfinite(rms)):
            return False
        return not clip or (abs(mean) <= self.opts.mean_max and rms <= self.opts.std_max)

    def build_single(
        self, basis: np.ndarray, *, rebuild: bool = False, reason: str = "single"
    ) -> int:
        """BuildSingleKernelVisitor over the visited candidates; returns the number rejected."""
        n_rej = 0
        for i in self.visited():
            if (self.recent[i] is not None) != rebuild:  # rebuild: only already-built ones
                continue
            sol = self._fit(i, basis, regularize=not rebuild)
            if sol is not None:
                self.recent[i] = sol
                if self.orig[i] is None:
                    self.orig[i] = sol
            if sol is None or not self._judge(sol.mean_z, sol.rms_z, self.opts.single_clip):
                self.status[i], n_rej = self.BAD, n_rej + 1
            else:
                self.status[i] = self.GOOD
        self.rejections[reason] += n_rej
        return n_rej

    def clip_kernel_sum(self, max_sigma: float, clip: bool) -> tuple[float, float, int]:
        """KernelSumVisitor: MEANCLIP/STDEVCLIP of the kernel sums, reject beyond max_sigma·s."""
        idx = self.visited()
        if idx.size == 0:
            reasons = ", ".join(f"{k} {v}" for k, v in self.rejections.items() if v)
            raise ValueError(
                f"no usable kernel candidates: all {len(self.stamps)} stamps were "
                f"rejected (rejections: {reasons or 'none'})"
            )
        ksum = np.array([self.recent[i].kernel_sum for i in idx])
        mean, std = _clip_mean_std(ksum)
        # the 1e-12 relative floor only matters for identical kernel sums (std ~ round-off)
        limit = max(max_sigma * std, 1e-12 * abs(mean))
        reject = idx[np.abs(ksum - mean) > limit] if clip else idx[:0]
        self.status[reject] = self.BAD
        self.rejections["kernel_sum"] += reject.size
        return mean, std, reject.size

    def pca_basis(self, n_pca: int, subtract_mean: bool) -> tuple[np.ndarray, int]:
        """PCA of the visited candidates' original kernels, renormalised; refit them all."""
        idx = [i for i in self.visited() if self.orig[i] is not None]
        if not idx:
            raise ValueError("no usable kernel candidates remain for the PCA basis")
        kern = np.stack([self.orig[i].kernel for i in idx])
        basis = _pca_basis(kern, n_pca, subtract_mean)
        return basis, self.build_single(basis, rebuild=True, reason="pca")

    def assess(self, spatial: SpatialKernel, clip: bool) -> tuple[int, int]:
        """AssessSpatialKernelVisitor: diffim statistics with the spatial kernel at each star."""
        n_rej = n_good = 0
        for i in self.visited():
            st = self.stamps[i]
            mean, rms = self.stats(
                i, spatial.kernel_image(st.x, st.y), spatial.background(st.x, st.y)
            )
            if self.recent[i] is not None and self._judge(mean, rms, clip):
                self.status[i], n_good = self.GOOD, n_good + 1
            else:
                self.status[i], n_rej = self.BAD, n_rej + 1
        self.rejections["spatial"] += n_rej
        return n_rej, n_good

    def spatial_fit(self, basis: np.ndarray, **kw) -> SpatialKernel:
        """BuildSpatialKernelVisitor: unbuilt visited candidates become BAD (they keep their
        cell slot, as in afw), the others enter :func:`solve_spatial`."""
        idx = self.visited()
        unbuilt = np.array([self.recent[i] is None for i in idx], bool)
        self.status[idx[unbuilt]] = self.BAD
        idx = idx[~unbuilt]
        if idx.size == 0:
            raise ValueError(
                "no usable kernel candidates remain for the spatial fit "
                f"(all {len(self.stamps)} stamps rejected)"
            )
        pos = np.array([(self.stamps[i].x, self.stamps[i].y) for i in idx])
        return solve_spatial([self.recent[i] for i in idx], pos, basis, **kw)


def _pca_basis(kernels: np.ndarray, n_pca: int, subtract_mean: bool) -> np.ndarray:
    """[mean,] eigen-kernels of the kernel images, first min(n_pca, n) kept, renormalised."""
    n, size = kernels.shape[0], kernels.shape[-1]
    x = kernels.reshape(n, -1)
    mean = x.mean(axis=0)
    if subtract_mean:
        x = x - mean
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    eig = ([mean] if subtract_mean else []) + list(vt)
    keep = [e for e in eig[: min(n_pca, sv.size)] if np.isfinite(e).all()]
    return renormalize_basis(np.array(keep).reshape(-1, size, size))


def _cells(stamps: Sequence[CandidateStamp], bbox, cell_size, ratings) -> list[np.ndarray]:
    """Candidate indices per cell (afw SpatialCellSet over ``bbox``), best rating first."""
    x0, y0, x1, y1 = bbox
    ncx = max(1, math.ceil((x1 - x0) / cell_size[0]))
    ncy = max(1, math.ceil((y1 - y0) / cell_size[1]))
    pos = np.array([(s.x, s.y) for s in stamps], np.float64).reshape(-1, 2)
    outside = (pos[:, 0] < x0) | (pos[:, 0] > x1) | (pos[:, 1] < y0) | (pos[:, 1] > y1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"candidate {i} at {tuple(pos[i])} lies outside bbox {tuple(bbox)}")
    cx = np.minimum(((pos[:, 0] - x0) // cell_size[0]).astype(int), ncx - 1)
    cy = np.minimum(((pos[:, 1] - y0) // cell_size[1]).astype(int), ncy - 1)
    cell = cy * ncx + cx
    order = np.lexsort((-np.asarray(ratings, np.float64), cell))  # stable within a cell
    return [order[cell[order] == c] for c in range(ncx * ncy) if (cell == c).any()]


def _rating(st: CandidateStamp, core_radius: int, bad_bits: int) -> float:
    """``st.rating``, else the mean science S/N over the central (2r+1)² box (KernelCandidate)."""
    if st.rating is not None:
        return float(st.rating)
    sci, var = np.asarray(st.science, np.float64), np.asarray(st.variance_science, np.float64)
    cy, cx = sci.shape[0] // 2, sci.shape[1] // 2
    box = (
        slice(max(0, cy - core_radius), cy + core_radius + 1),
        slice(max(0, cx - core_radius), cx + core_radius + 1),
    )
    keep = np.ones(sci[box].shape, bool)
    if st.mask_science is not None and bad_bits:
        keep = (np.asarray(st.mask_science)[box] & bad_bits) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = 1.0 / var[box]
        keep &= np.isfinite(ivar)
        mean, _ = _mean_rms(sci[box][keep] * np.sqrt(ivar[keep]))
    return mean if math.isfinite(mean) else -math.inf


def _is_delta_basis(basis: np.ndarray) -> bool:
    flat = basis.reshape(basis.shape[0], -1)
    return flat.shape[0] == flat.shape[1] and np.array_equal(flat, np.eye(flat.shape[0]))


def fit_psf_matching_kernel(
    stamps: Sequence[CandidateStamp],
    *,
    basis: np.ndarray,
    bbox: tuple[float, float, float, float],
    spatial_order: int = 2,
    bg_order: int = 1,
    model: T_Model = "chebyshev1",
    fit_background: bool = False,
    constant_first_term: bool | None = None,
    cell_size: tuple[int, int] = (128, 128),
    n_star_per_cell: int = 5,
    max_spatial_iterations: int = 3,
    single_kernel_clipping: bool = True,
    kernel_sum_clipping: bool = True,
    spatial_kernel_clipping: bool = True,
    max_ksum_sigma: float = 3.0,
    residual_mean_max: float = 0.25,
    residual_std_max: float = 1.5,
    use_core_stats: bool = False,
    core_radius: int = 3,
    bad_bits: int = 0,
    constant_variance: bool = True,
    regularization: np.ndarray | None = None,
    lam: float = 0.2,
    max_condition_number: float | None = None,
    use_pca: bool = False,
    n_pca: int = 5,
    subtract_mean_for_pca: bool = True,
) -> tuple[SpatialKernel, FitInfo]:
    """Spatially varying PSF-matching kernel with LSST's candidate rejection (PsfMatchTask._solve).

    Candidates are binned in ``cell_size`` cells over ``bbox`` and ranked by rating; each step
    visits the first ``n_star_per_cell`` (-1: all) non-rejected candidates of every cell:

    1. single kernels (:func:`solve_candidate`) until none is rejected (NaN statistics, or
       |mean z| > ``residual_mean_max`` / rms z > ``residual_std_max`` when clipping);
    2. kernel sums: MEANCLIP/STDEVCLIP (3σ, 3 iterations); reject |ksum - μ| > max_ksum_sigma·s
       and restart step 1 (uncounted) if any;
    3. optionally a PCA basis from the visited kernels (refit; restart if any rejection);
    4. spatial fit (:func:`solve_spatial`), 5. assessment with the spatial kernel at each
       candidate; stop when nothing is rejected, else iterate (at most
       ``max_spatial_iterations``), with a final fit on the survivors.

    ``constant_first_term`` None means: True unless ``basis`` is the delta-function basis
    without PCA (LSST: AL or PCA). ``regularization``/``lam`` apply to the single kernels of
    the input basis only. ``max_condition_number`` (None: no check) rejects candidates whose
    M has a larger eigenvalue condition number.

    Raises
    ------
    ValueError
        If there are no stamps or no usable candidate remains.
    """
    if len(stamps) == 0:
        raise ValueError("no kernel candidates: the stamp list is empty")
    if max_spatial_iterations < 1 or n_star_per_cell == 0 or n_star_per_cell < -1:
        raise ValueError("max_spatial_iterations must be >= 1 and n_star_per_cell >= 1 or -1")
    basis = np.asarray(basis, np.float64)
    if constant_first_term is None:
        constant_first_term = use_pca or not _is_delta_basis(basis)
    opts = _Options(
        fit_background,
        constant_variance,
        regularization,
        lam,
        single_kernel_clipping,
        residual_mean_max,
        residual_std_max,
        core_radius if use_core_stats else None,
        bad_bits,
        max_condition_number,
    )
    ratings = [_rating(s, core_radius, bad_bits) for s in stamps]
    loop = _Loop(stamps, _cells(stamps, bbox, cell_size, ratings), n_star_per_cell, opts)
    spatial_kw = {
        "spatial_order": spatial_order,
        "bg_order": bg_order,
        "model": model,
        "bbox": bbox,
        "fit_background": fit_background,
        "constant_first_term": constant_first_term,
    }
    it = restarts = n_rej_spatial = 0
    spatial_basis, converged, spatial = basis, False, None
    ksum = (math.nan, math.nan)
    while it < max_spatial_iterations:
        while loop.build_single(basis) > 0:
            pass
        *ksum, n_rej = loop.clip_kernel_sum(max_ksum_sigma, kernel_sum_clipping)
        if n_rej > 0:
            restarts += 1
            continue
        if use_pca:
            spatial_basis, n_rej = loop.pca_basis(n_pca, subtract_mean_for_pca)
            if n_rej > 0:
                restarts += 1
                continue
        spatial = loop.spatial_fit(spatial_basis, **spatial_kw)
        n_rej_spatial, n_good = loop.assess(spatial, spatial_kernel_clipping)
        if n_rej_spatial == 0:
            converged = n_good > 0
            break
        it += 1
    if spatial is None or n_rej_spatial > 0:  # final fit with the survivors
        if use_pca:
            spatial_basis, _ = loop.pca_basis(n_pca, subtract_mean_for_pca)
        spatial = loop.spatial_fit(spatial_basis, **spatial_kw)
    return spatial, _info(loop, spatial_basis, it, restarts, ksum, converged)


def _info(loop: _Loop, basis, it, restarts, ksum, converged) -> FitInfo:
    used = set(loop.visited().tolist())
    names = []
    for i, s in enumerate(loop.status):
        names.append("bad" if s == loop.BAD else "good" if i in used else "unused")
    return FitInfo(
        tuple(names),
        tuple(loop.recent),
        basis,
        it,
        restarts,
        float(ksum[0]),
        float(ksum[1]),
        converged,
        len(used),
        dict(loop.rejections),
    )
