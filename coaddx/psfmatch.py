"""PSF-matching configuration and kernel-candidate selection (ip_diffim, algorithms.md 6).

``PsfMatchConfig`` carries the PsfMatchConfig / ImagePsfMatchConfig defaults of LSST;
``snap_config`` is the SnapPsfMatch preset (6.7). Candidates for the kernel fit are stars
detected on the science image with ``sep`` (SExtractor's background and extraction in C: a
small, well-kept wheel with no further dependencies, faster than photutils for this), on a
grid of cells, with stamps that touch a bad mask plane in either image rejected and the
brightest ``n_star_per_cell`` kept per cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigError, InputError
from .exposure import Exposure
from .masks import bitmask

__all__ = ["PsfMatchConfig", "select_candidate_positions", "snap_config"]


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"PsfMatchConfig.{name}: {msg}")


@dataclass(frozen=True, kw_only=True)
class PsfMatchConfig:
    """ip_diffim PsfMatchConfig (with the ImagePsfMatch detection settings), LSST defaults."""

    basis: Literal["alard-lupton", "delta-function"] = "alard-lupton"
    kernel_size: int = 21
    scale_by_fwhm: bool = True
    kernel_size_min: int = 21
    kernel_size_max: int = 35
    spatial_model: Literal["chebyshev1", "polynomial"] = "chebyshev1"
    spatial_kernel_order: int = 2
    spatial_bg_order: int = 1
    fit_for_background: bool = False
    size_cell: int = 128
    n_star_per_cell: int = 5
    max_spatial_iterations: int = 3
    use_pca: bool | None = None  # None: False for AL, True for DF (LSST)
    n_principal_components: int = 5
    single_kernel_clipping: bool = True
    kernel_sum_clipping: bool = True
    spatial_kernel_clipping: bool = True
    bad_mask_planes: tuple[str, ...] = ("NO_DATA", "EDGE", "SAT")
    candidate_residual_mean_max: float = 0.25
    candidate_residual_std_max: float = 1.5
    max_ksum_sigma: float = 3.0
    constant_variance_weighting: bool = True
    al_n_gauss: int = 3
    al_degrees: tuple[int, ...] = (4, 2, 2)
    al_sigmas: tuple[float, ...] = (0.7, 1.5, 3.0)
    al_beta: float = 2.0
    al_min_sig: float = 0.7
    al_min_sig_deconv: float = 0.4
    df_regularization: Literal["centralDifference", "forwardDifference"] | None = (
        "centralDifference"
    )
    df_stencil: int = 9
    df_orders: tuple[int, ...] = (1, 2)
    df_border_penalty: float = 3.0
    df_lambda_type: Literal["absolute", "relative"] = "absolute"
    df_lambda_value: float = 0.2
    df_lambda_scaling: float = 1e-4
    detection_threshold: float = 10.0
    fp_grow_kernel_scaling: float = 1.0
    fp_grow_pix: int = 30
    convolve_template: bool = True
    region_size: int = 2048

    def __post_init__(self) -> None:
        _check(
            self.basis in ("alard-lupton", "delta-function"),
            "basis",
            f"must be 'alard-lupton' or 'delta-function', got {self.basis!r}",
        )
        _check(
            self.kernel_size % 2 == 1 and self.kernel_size >= 3,
            "kernel_size",
            f"must be odd and >= 3, got {self.kernel_size}",
        )
        _check(
            self.kernel_size_min <= self.kernel_size_max,
            "kernel_size_min",
            "must not exceed kernel_size_max",
        )
        _check(
            self.spatial_model in ("chebyshev1", "polynomial"),
            "spatial_model",
            f"must be 'chebyshev1' or 'polynomial', got {self.spatial_model!r}",
        )
        _check(0 <= self.spatial_kernel_order <= 5, "spatial_kernel_order", "must be in 0..5")
        _check(0 <= self.spatial_bg_order <= 5, "spatial_bg_order", "must be in 0..5")
        _check(self.size_cell >= 32, "size_cell", f"must be >= 32, got {self.size_cell}")
        _check(
            self.n_star_per_cell == -1 or self.n_star_per_cell >= 1,
            "n_star_per_cell",
            "must be >= 1 or -1 (all)",
        )
        _check(1 <= self.max_spatial_iterations <= 5, "max_spatial_iterations", "must be in 1..5")
        _check(self.n_principal_components >= 3, "n_principal_components", "must be >= 3")
        _check(
            len(self.al_degrees) == self.al_n_gauss == len(self.al_sigmas),
            "al_n_gauss",
            "al_degrees and al_sigmas need al_n_gauss entries",
        )
        _check(self.detection_threshold >= 3, "detection_threshold", "must be >= 3")
        _check(
            self.df_lambda_type in ("absolute", "relative"),
            "df_lambda_type",
            "must be 'absolute' or 'relative' (the risk-minimising modes are not usable in "
            "LSST either, algorithms.md 9.14)",
        )
        _check(self.region_size >= 256, "region_size", "must be >= 256 pixels")

    @property
    def pca(self) -> bool:
        return self.use_pca if self.use_pca is not None else self.basis == "delta-function"

    def replace(self, **changes: Any) -> PsfMatchConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def snap_config(
    basis: Literal["alard-lupton", "delta-function"] = "alard-lupton",
) -> PsfMatchConfig:
    """SnapPsfMatch preset for two snaps of one visit (algorithms.md 6.7): spatially constant
    7-pixel kernel, no spatial clipping; AL with two Gaussians (1.0, 2.5) of degrees (4, 2);
    DF without regularisation, with PCA. As in LSST, ``scale_by_fwhm`` stays on, so with known
    FWHMs the size is re-derived (clamped to >= 21)."""
    base = PsfMatchConfig(
        basis=basis,
        spatial_kernel_order=0,
        kernel_size=7,
        spatial_kernel_clipping=False,
        fit_for_background=False,
    )
    if basis == "alard-lupton":
        return base.replace(al_n_gauss=2, al_degrees=(4, 2), al_sigmas=(1.0, 2.5))
    return base.replace(df_regularization=None, use_pca=True)


def _background(image: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, float]:
    import sep

    data = np.ascontiguousarray(np.where(usable, image, 0.0), dtype=np.float64)
    try:
        bkg = sep.Background(data, mask=~usable, bw=64, bh=64)
        return data - bkg.back(), float(bkg.globalrms)
    except Exception:
        med = float(np.median(image[usable])) if usable.any() else 0.0
        mad = float(np.median(np.abs(image[usable] - med))) * 1.4826 if usable.any() else 1.0
        return data - med, mad


def select_candidate_positions(
    science: Exposure, template: Exposure, *, half: int, config: PsfMatchConfig
) -> np.ndarray:
    """Kernel candidates: ``(n, 2)`` integer ``(x, y)`` centres of stars on the science image.

    Detection at ``config.detection_threshold`` sigma (sep, background subtracted); stamps of
    half-size ``half`` that leave the image or touch a ``bad_mask_planes`` bit in either image
    are rejected; the brightest ``n_star_per_cell`` per ``size_cell`` cell are kept.
    """
    import sep

    if science.shape != template.shape:
        raise InputError(
            f"template {template.shape} and science {science.shape} must be on one "
            "grid (warp the template first)"
        )
    bad_s = bitmask(science.mask_planes, config.bad_mask_planes, strict=False)
    bad_t = bitmask(template.mask_planes, config.bad_mask_planes, strict=False)
    bad = ((science.mask & bad_s) != 0) | ((template.mask & bad_t) != 0)
    usable = ~bad & np.isfinite(science.image) & np.isfinite(template.image)
    data, rms = _background(science.image, usable)
    try:
        objects = sep.extract(
            data, config.detection_threshold, err=rms, mask=~usable, minarea=5, deblend_cont=1.0
        )
    except Exception as exc:
        raise InputError(f"{science.where}: source detection failed: {exc}") from exc
    ny, nx = science.shape
    xs, ys = np.rint(objects["x"]).astype(int), np.rint(objects["y"]).astype(int)
    inside = (xs >= half) & (ys >= half) & (xs < nx - half) & (ys < ny - half)
    xs, ys, flux = xs[inside], ys[inside], objects["flux"][inside]
    if xs.size == 0:
        return np.zeros((0, 2), dtype=int)
    # stamps touching a bad pixel are rejected: a summed-area table makes it one lookup each
    sat = np.pad(np.cumsum(np.cumsum(bad, 0), 1), ((1, 0), (1, 0)))
    y0, y1, x0, x1 = ys - half, ys + half + 1, xs - half, xs + half + 1
    nbad = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    keep = nbad == 0
    xs, ys, flux = xs[keep], ys[keep], flux[keep]
    cell = (ys // config.size_cell) * (nx // config.size_cell + 1) + xs // config.size_cell
    order = np.lexsort((-flux, cell))
    xs, ys, cell = xs[order], ys[order], cell[order]
    rank = np.arange(cell.size) - np.searchsorted(cell, cell)
    take = rank < config.n_star_per_cell if config.n_star_per_cell > 0 else np.ones_like(rank, bool)
    return np.column_stack([xs[take], ys[take]])


# -- ModelPsfMatch (algorithms.md 5.3, 6.5) -------------------------------------------------

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True, kw_only=True)
class ModelPsfMatchConfig:
    """MakePsfMatchedWarp's ModelPsfMatch: match every warp to a double-Gaussian model PSF.

    ``kernel_sum_fit``: "constrained" (default) fits the kernel with its sum fixed to 1;
    "lsst" fits freely and then overwrites the sum as ModelPsfMatchTask does, which leaves the
    matched PSF too narrow (by 13 % for a 3.5 px Moffat; docs/design-notes.md, "ModelPsfMatch:
    the kernel sum is fixed inside the fit").

    ``kernel_norm_penalty``: the fit minimises |model - K⊗psf|² + λ ΣK², λ =
    kernel_norm_penalty · tr(M)/tr(G) (M the normal matrix, G the basis Gram matrix,
    :func:`coaddx.kernels.psfmatch.kernel_norm_matrix`). The noise-free PSF fit is otherwise
    ill-conditioned: directions that barely change the residual get huge coefficients
    (ΣK² up to 3300 for a 6.5 px Gaussian). The default 5e-4 keeps ΣK² <= 0.022 and
    min K >= -0.06 max K for Moffat and Gaussian PSFs of FWHM 3-6.5 px, the matched FWHM
    within 1.8 % of the model; 0 is the plain least-squares fit of LSST (docs/design-notes.md,
    "ModelPsfMatch: the kernel's square sum is penalised").
    """

    model_psf_fwhm: float = 7.7
    kernel_size: int = 21
    al_sigmas: tuple[float, ...] = (1.0, 2.0, 4.5)
    al_degrees: tuple[int, ...] = (4, 2, 2)
    auto_pad_psf_to: float = 1.4
    kernel_sum_fit: Literal["constrained", "lsst"] = "constrained"
    kernel_norm_penalty: float = 5e-4

    def __post_init__(self) -> None:
        if not self.model_psf_fwhm > 0:
            raise ConfigError(
                f"ModelPsfMatchConfig.model_psf_fwhm must be > 0, got {self.model_psf_fwhm}"
            )
        if self.kernel_size % 2 != 1:
            raise ConfigError(
                f"ModelPsfMatchConfig.kernel_size must be odd, got {self.kernel_size}"
            )
        if not 1.0 <= self.auto_pad_psf_to <= 2.0:
            raise ConfigError("ModelPsfMatchConfig.auto_pad_psf_to must be in 1.0..2.0")
        if len(self.al_sigmas) != len(self.al_degrees):
            raise ConfigError("ModelPsfMatchConfig.al_sigmas and al_degrees need equal lengths")
        if self.kernel_sum_fit not in ("constrained", "lsst"):
            raise ConfigError(
                "ModelPsfMatchConfig.kernel_sum_fit must be 'constrained' or "
                f"'lsst', got {self.kernel_sum_fit!r}"
            )
        if not (np.isfinite(self.kernel_norm_penalty) and self.kernel_norm_penalty >= 0):
            raise ConfigError(
                "ModelPsfMatchConfig.kernel_norm_penalty must be finite and >= 0, "
                f"got {self.kernel_norm_penalty}"
            )


def model_psf(fwhm: float = 7.7, size: int | None = None) -> np.ndarray:
    """GaussianPsfFactory's model: DoubleGaussianPsf(size, sigma1 = fwhm/2.3548, sigma2 =
    2.5 sigma1, b = 0.1) on the pixel grid, unit sum; size = (int(3 fwhm)//2)*2 + 1 (23 for
    7.7) unless given."""
    size = size or max((int(3.0 * fwhm) // 2) * 2 + 1, 5)
    s1 = fwhm * FWHM_TO_SIGMA
    s2 = 2.5 * s1
    r2 = np.add.outer((np.arange(size) - size // 2) ** 2, (np.arange(size) - size // 2) ** 2)
    psf = np.exp(-r2 / (2 * s1**2)) + 0.1 * np.exp(-r2 / (2 * s2**2))
    return psf / psf.sum()


def _pad(psf: np.ndarray, size: int) -> np.ndarray:
    n = psf.shape[0]
    if n == size:
        return psf.astype(np.float64)
    if n > size:
        c = (n - size) // 2
        return psf[c : c + size, c : c + size].astype(np.float64)
    out = np.zeros((size, size))
    c = (size - n) // 2
    out[c : c + n, c : c + n] = psf
    return out


def model_matching_kernel(psf: np.ndarray, config: ModelPsfMatchConfig | None = None):
    """The kernel that turns ``psf`` (an odd, centred PSF image) into the model PSF, with unit sum
    (ModelPsfMatchTask with a spatially constant PSF: one candidate, algorithms.md 6.5).

    Both PSFs are put on a psf_size² grid, psf_size = max(PSF width, next odd integer >=
    kernel_size·auto_pad_psf_to); the model is evaluated on that grid (DoubleGaussianPsf
    ``resized``: its wings are not cut at the model's own 23 px). The fit penalises ΣK²
    (``config.kernel_norm_penalty``); the penalised normal equations are solved with the
    kernel sum fixed (``kernel_sum_fit``). Raises InputError for a PSF that is not an odd
    square with a positive sum.
    """
    from .kernels.psfmatch import (
        alard_lupton_basis,
        kernel_norm_matrix,
        solve_candidate,
        solve_spatial,
    )

    config = config or ModelPsfMatchConfig()
    psf = np.asarray(psf, np.float64)
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise InputError(
            f"model_matching_kernel: the PSF must be an odd square image, got {psf.shape}"
        )
    if not (np.isfinite(psf).all() and psf.sum() > 0):
        raise InputError("model_matching_kernel: the PSF image must be finite with a positive sum")
    min_size = int(np.ceil(config.kernel_size * config.auto_pad_psf_to))
    size = max(psf.shape[0], min_size + (1 - min_size % 2))
    if config.kernel_size > size - 2:  # LSST: kernelSize <= psfSize - 1, made odd
        raise ConfigError(
            f"ModelPsfMatchConfig.kernel_size {config.kernel_size} needs PSF images "
            f"of at least {config.kernel_size + 2} px (padded: {size}); raise "
            "auto_pad_psf_to"
        )
    template, science = _pad(psf / psf.sum(), size), model_psf(config.model_psf_fwhm, size)
    basis = alard_lupton_basis(config.kernel_size, config.al_sigmas, config.al_degrees)
    ones = np.ones_like(template)
    penalty = {}
    if config.kernel_norm_penalty > 0:
        penalty = {
            "regularization": kernel_norm_matrix(basis),
            "lam_type": "relative",
            "lam_scaling": config.kernel_norm_penalty,
        }
    solution = solve_candidate(template, science, ones, ones, basis, **penalty)
    fixed = 1.0 if config.kernel_sum_fit == "constrained" else None
    kernel = solve_spatial(
        [solution],
        np.array([[0.0, 0.0]]),
        basis,
        spatial_order=0,
        bg_order=0,
        bbox=(-1.0, -1.0, 1.0, 1.0),
        kernel_sum=fixed,
    )
    return kernel.with_kernel_sum(1.0)
