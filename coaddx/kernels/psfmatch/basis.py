"""Kernel bases of ip_diffim's PSF matching (algorithms.md 6.2), on numpy only.

Alard-Lupton bases (Gaussians times polynomials, the automatic sigma ladder and the
renormalisation rule), delta-function bases with their regularisation matrices (central and
forward differences), and the basis renormalisation used for PCA bases. Kernels are odd-sized
squares centred on ``(size // 2, size // 2)``, arrays (row, column) = (y, x); see
:mod:`coaddx.kernels.psfmatch` for the fitting and convolution conventions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from coaddx.constants import SIGMA_TO_FWHM

__all__ = [
    "SeparableBasis",
    "alard_lupton_basis",
    "alard_lupton_sigmas",
    "delta_function_basis",
    "kernel_norm_matrix",
    "monomials",
    "regularization_matrix",
    "renormalize_basis",
    "separable_basis",
]

_FLOAT32_EPS = float(np.finfo(np.float32).eps)

T_Regularization = Literal["centralDifference", "forwardDifference"]

# ----------------------------------------------------------------------------------- bases (6.2)


def alard_lupton_sigmas(
    fwhm_template: float | None,
    fwhm_science: float | None,
    *,
    n_gauss: int = 3,
    sigmas: Sequence[float] = (0.7, 1.5, 3.0),
    beta: float = 2.0,
    min_sig: float = 0.7,
    min_sig_deconv: float = 0.4,
    kernel_size: int = 21,
    size_min: int = 21,
    size_max: int = 35,
    scale_by_fwhm: bool = True,
    size_fwhm_scaling: float = 6.0,
) -> tuple[tuple[float, ...], int]:
    """Gaussian widths and kernel size of the AL basis (generateAlardLuptonBasisList, modern).

    ``fwhm_template`` is the FWHM of the image that gets convolved. With a missing FWHM, equal
    widths or ``scale_by_fwhm=False`` the configured ``sigmas`` and ``kernel_size`` are returned.
    Otherwise k = sqrt(|σ_s² - σ_t²|) floored at ``min_sig`` (convolution) or
    ``min_sig_deconv`` (deconvolution), σ_0 = max(floor, k/β) (k if one Gaussian),
    σ_{j+1} = β σ_j, and the size is int(6 σ_last) made odd and clamped to [min, max].

    Examples
    --------
    >>> alard_lupton_sigmas(3.0, 4.0)
    ((0.7, 1.4, 2.8), 21)
    """
    config = tuple(float(s) for s in sigmas)
    if len(config) != n_gauss:
        raise ValueError(f"len(sigmas) = {len(config)} != n_gauss = {n_gauss}")
    if fwhm_template is None or fwhm_science is None or not scale_by_fwhm:
        return config, int(kernel_size)
    sig_t, sig_s = fwhm_template / SIGMA_TO_FWHM, fwhm_science / SIGMA_TO_FWHM
    if sig_t == sig_s:
        return config, int(kernel_size)
    floor = min_sig if sig_s > sig_t else min_sig_deconv
    k = max(math.sqrt(abs(sig_s**2 - sig_t**2)), floor)
    first = max(floor, k / beta) if n_gauss > 1 else k
    out = tuple(first * beta**j for j in range(n_gauss))
    size = int(size_fwhm_scaling * out[-1])
    size += 1 - size % 2
    return out, int(min(max(size, size_min), size_max))


def monomials(order: int) -> list[tuple[int, int]]:
    """(x power, y power) of the afw PolynomialFunction2 terms of total degree <= order."""
    return [(d - i, i) for d in range(order + 1) for i in range(d + 1)]


def alard_lupton_basis(
    kernel_size: int, sigmas: Sequence[float], degrees: Sequence[int] = (4, 2, 2)
) -> np.ndarray:
    """Alard-Lupton basis (makeAlardLuptonBasisList), renormalised.

    For each Gaussian (unit sum on the grid) and each monomial x^i y^j of degree <= d, with
    x = u / half_width, y = v / half_width running -1..1 edge to edge (not scaled by σ).
    The basis is registered with its separable form (:func:`separable_basis`), which the fits
    use to build their normal equations from 1-D filters.

    Returns
    -------
    ndarray of shape (n_basis, kernel_size, kernel_size), float64
        Renormalised (:func:`renormalize_basis`): B_0 unit sum, the others zero sum (where
        their raw sum is not ~0) and unit L2 norm. 27 bases for the default degrees.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if len(sigmas) != len(degrees):
        raise ValueError(f"{len(sigmas)} sigmas but {len(degrees)} degrees")
    half = kernel_size // 2
    v, u = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    t = np.arange(-half, half + 1, dtype=np.float64)
    scale = float(max(half, 1))
    out: list[np.ndarray] = []
    filters: list[np.ndarray] = []
    x_index: list[int] = []
    y_index: list[int] = []
    for sigma, degree in zip(sigmas, degrees, strict=True):
        gauss = np.exp(-(u * u + v * v) / (2.0 * float(sigma) ** 2))
        gauss /= gauss.sum()
        out.extend(gauss * (u / scale) ** px * (v / scale) ** py for px, py in monomials(degree))
        g1 = np.exp(-(t * t) / (2.0 * float(sigma) ** 2))
        first = len(filters)
        # |t|^p · sign(t)^p: exactly (anti)symmetric filters, which the x passes exploit
        filters.extend(
            g1 / g1.sum() * (np.abs(t) / scale) ** p * np.sign(t) ** p for p in range(degree + 1)
        )
        x_index.extend(first + px for px, _ in monomials(degree))
        y_index.extend(first + py for _, py in monomials(degree))
    basis, mix = _renormalize_tracked(np.array(out))
    _register(
        basis,
        SeparableBasis(
            np.array(filters), np.array(x_index, np.intp), np.array(y_index, np.intp), mix
        ),
    )
    return basis


def kernel_norm_matrix(basis: np.ndarray) -> np.ndarray:
    """Gram matrix G_jk = Σ_pixels B_j B_k, so that aᵀGa = Σ K² for K = Σ_j a_j B_j.

    As the ``regularization`` of :func:`solve_candidate` it penalises the kernel's square sum,
    the factor by which convolving with K scales white-noise variance (ModelPsfMatch).
    """
    flat = np.asarray(basis, np.float64).reshape(len(basis), -1)
    return flat @ flat.T


def delta_function_basis(kernel_size: int) -> np.ndarray:
    """Delta-function basis: basis ``row * size + col`` is 1 at (row, col), 0 elsewhere."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    n = kernel_size * kernel_size
    return np.eye(n).reshape(n, kernel_size, kernel_size)


def renormalize_basis(basis: np.ndarray) -> np.ndarray:
    """renormalizeKernelList: B_0 to unit sum; B_j (j >= 1) to zero sum and unit L2 norm.

    B_j ← B_j / ΣB_j - B_0 when |ΣB_j| > float32 epsilon, then B_j ← B_j / ||B_j||. B_0 is
    divided by its sum (a no-op for the AL basis; it makes a PCA mean kernel unit-sum, which
    LSST assumes), so the kernel sum is always the coefficient of B_0.
    """
    return _renormalize_tracked(basis)[0]


def _renormalize_tracked(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`renormalize_basis` and the matrix R with renormalised = R @ raw (flattened)."""
    out = np.array(basis, dtype=np.float64, copy=True)
    if out.ndim != 3 or out.shape[0] == 0:
        raise ValueError(f"basis must have shape (n_basis, size, size), got {out.shape}")
    mix = np.eye(out.shape[0])
    s0 = out[0].sum()
    if abs(s0) > _FLOAT32_EPS:
        out[0] /= s0
        mix[0] /= s0
    for j in range(1, out.shape[0]):
        s = out[j].sum()
        if abs(s) > _FLOAT32_EPS:
            out[j] = out[j] / s - out[0]
            mix[j] = mix[j] / s - mix[0]
        norm = math.sqrt(float((out[j] ** 2).sum()))
        if norm > 0.0:
            out[j] /= norm
            mix[j] /= norm
    return out, mix


# ------------------------------------------------------------------------- separable form


@dataclass(frozen=True, eq=False)
class SeparableBasis:
    """A basis given as combinations of separable terms (the AL basis, afw's orientation).

    Raw term r is the outer product ``filters[y_index[r]][:, None] * filters[x_index[r]]``
    (rows = v, columns = u), and basis image k is ``Σ_r mix[k, r] · term_r``; correlating a
    stamp with term r is one 1-D pass along x and one along y.
    """

    filters: np.ndarray  # (n_filters, size)
    x_index: np.ndarray  # (n_raw,)
    y_index: np.ndarray  # (n_raw,)
    mix: np.ndarray  # (n_basis, n_raw)

    def images(self) -> np.ndarray:
        """The basis images, array of shape (n_basis, size, size)."""
        terms = self.filters[self.y_index][:, :, None] * self.filters[self.x_index][:, None, :]
        return np.tensordot(self.mix, terms, axes=1)


_SEPARABLE: dict[tuple[tuple[int, ...], bytes], SeparableBasis] = {}
_SEPARABLE_MAX = 32


def _key(basis: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    data = np.ascontiguousarray(basis, dtype=np.float64)
    return data.shape, hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def _register(basis: np.ndarray, form: SeparableBasis) -> None:
    if len(_SEPARABLE) >= _SEPARABLE_MAX:
        _SEPARABLE.pop(next(iter(_SEPARABLE)))
    _SEPARABLE[_key(basis)] = form


def separable_basis(basis: np.ndarray) -> SeparableBasis | None:
    """The separable form of a basis that :func:`alard_lupton_basis` built in this process
    (looked up by content: equal arrays only), or None (delta-function, PCA or other bases)."""
    if np.ndim(basis) != 3:
        return None
    return _SEPARABLE.get(_key(basis))


# ----------------------------------------------------------------------- regularisation (6.2)

_STENCILS = {
    5: np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
    9: np.array([[1.0, 4.0, 1.0], [4.0, -20.0, 4.0], [1.0, 4.0, 1.0]]) / 6.0,
}
_FORWARD: tuple[list[float], ...] = (
    [],
    [-1.0, 1.0],
    [-1.0, 2.0, -1.0],
    [-1.0, 3.0, -3.0, 1.0],
)  # order 0 = border


def _central_difference(n: int, stencil: int, border: float) -> np.ndarray:
    if stencil not in _STENCILS:
        raise ValueError(f"stencil must be 5 or 9, got {stencil}")
    b = np.zeros((n * n, n * n))
    rows, cols = np.mgrid[0:n, 0:n]
    edge = (rows == 0) | (rows == n - 1) | (cols == 0) | (cols == n - 1)
    idx = (rows * n + cols)[edge]
    b[idx, idx] = border
    r, c = rows[~edge], cols[~edge]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            b[r * n + c, (r + dy) * n + c + dx] = _STENCILS[stencil][dy + 1, dx + 1]
    return b


def _forward_difference(n: int, orders: Sequence[int], border: float) -> np.ndarray:
    coeffs = [[border], *_FORWARD[1:]]
    b = np.zeros((n * n, n * n))
    rows, cols = (a.ravel() for a in np.mgrid[0:n, 0:n])
    idx = rows * n + cols
    for order in orders:
        if not 1 <= order <= 3:
            raise ValueError(f"forward-difference orders must be 1..3, got {order}")
        use_x, use_y = np.minimum(n - cols - 1, order), np.minimum(n - rows - 1, order)
        for o in range(order + 1):  # taper the order near the far edge (afw)
            for j in range(o + 1):
                sx, sy = use_x == o, use_y == o
                np.add.at(b, (idx[sx], idx[sx] + j), coeffs[o][j])
                np.add.at(b, (idx[sy], idx[sy] + j * n), coeffs[o][j])
    return b


def regularization_matrix(
    kernel_size: int,
    *,
    kind: T_Regularization = "centralDifference",
    stencil: int = 9,
    orders: Sequence[int] = (1, 2),
    border_penalty: float = 3.0,
    fit_background: bool = False,
) -> np.ndarray:
    """Delta-function regularisation H = BᵀB (ip_diffim makeRegularizationMatrix).

    B has one row per kernel pixel (index ``row * size + col``): "centralDifference" puts the
    5- or 9-point Laplacian on interior pixels and ``border_penalty`` on the diagonal of border
    pixels; "forwardDifference" sums, for each order, x and y forward-difference rows tapered
    near the far edge (order 0 there: the ``border_penalty`` diagonal). With ``fit_background``
    a zero row and column is appended for the background term.

    Returns
    -------
    ndarray of shape (n, n), n = kernel_size² (+1), symmetric positive semi-definite.
    """
    if border_penalty < 0:
        raise ValueError(f"border_penalty must be >= 0, got {border_penalty}")
    if kind == "centralDifference":
        b = _central_difference(kernel_size, stencil, border_penalty)
    elif kind == "forwardDifference":
        b = _forward_difference(kernel_size, orders, border_penalty)
    else:
        raise ValueError(f"kind must be 'centralDifference' or 'forwardDifference', got {kind!r}")
    if fit_background:
        b = np.pad(b, ((0, 1), (0, 1)))
    return b.T @ b
