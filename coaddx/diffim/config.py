"""PSF-matching configuration (ip_diffim, algorithms.md 6).

``PsfMatchConfig`` carries the PsfMatchConfig / ImagePsfMatchConfig defaults of LSST (the LSST
names in :data:`coaddx.lsst.LSST_PSF_MATCH_NAMES`); :meth:`PsfMatchConfig.fit_options` gives the
kernel fit its :class:`~coaddx.kernels.psfmatch.fit.FitOptions`; ``snap_config`` is the
SnapPsfMatch preset (6.7).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from coaddx.errors import ConfigError
from coaddx.kernels.psfmatch.fit import FitOptions
from coaddx.model.masks import DEFAULT_MASK_PLANES
from coaddx.validation import (
    check_bool,
    check_choice,
    check_number,
    check_numbers,
    check_positive,
    plane_names,
)

__all__ = ["PsfMatchConfig", "snap_config"]


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
    df_lambda_value: float = 0.2
    detection_threshold: float = 10.0
    fp_grow_kernel_scaling: float = 1.0
    convolve_template: bool = True
    region_size: int = 2048
    #: "blockwise" (the kernel per 8 x 256 block, linear in x, direct sums; ~5x less CPU,
    #: < 0.003 of the difference noise rms from "exact") or "exact" (the kernel evaluated at
    #: every pixel, as afw's convolve): :mod:`coaddx.kernels.psfmatch.convolve`. No LSST name.
    convolution: Literal["blockwise", "exact"] = "blockwise"

    def __post_init__(self) -> None:
        cls = "PsfMatchConfig"
        check_choice(self.basis, cls, "basis", ("alard-lupton", "delta-function"))
        for name in ("kernel_size", "kernel_size_min", "kernel_size_max"):
            check_number(getattr(self, name), cls, name, 3, 1001, integer=True)
        _check(
            self.kernel_size % 2 == 1,
            "kernel_size",
            f"must be odd and >= 3, got {self.kernel_size}",
        )
        _check(
            self.kernel_size_min <= self.kernel_size_max,
            "kernel_size_min",
            "must not exceed kernel_size_max",
        )
        check_choice(self.spatial_model, cls, "spatial_model", ("chebyshev1", "polynomial"))
        check_number(self.spatial_kernel_order, cls, "spatial_kernel_order", 0, 5, integer=True)
        check_number(self.spatial_bg_order, cls, "spatial_bg_order", 0, 5, integer=True)
        check_number(self.size_cell, cls, "size_cell", 32, 1 << 20, integer=True)
        check_number(self.n_star_per_cell, cls, "n_star_per_cell", -1, 1 << 20, integer=True)
        _check(self.n_star_per_cell != 0, "n_star_per_cell", "must be >= 1 or -1 (all)")
        check_number(self.max_spatial_iterations, cls, "max_spatial_iterations", 1, 5, integer=True)
        check_number(
            self.n_principal_components, cls, "n_principal_components", 3, 1000, integer=True
        )
        for name in (
            "scale_by_fwhm",
            "fit_for_background",
            "single_kernel_clipping",
            "kernel_sum_clipping",
            "spatial_kernel_clipping",
            "constant_variance_weighting",
            "convolve_template",
        ):
            check_bool(getattr(self, name), cls, name)
        if self.use_pca is not None:
            check_bool(self.use_pca, cls, "use_pca")
        planes = plane_names(self.bad_mask_planes, cls, "bad_mask_planes", DEFAULT_MASK_PLANES)
        object.__setattr__(self, "bad_mask_planes", planes)
        for name in ("candidate_residual_mean_max", "candidate_residual_std_max"):
            check_number(getattr(self, name), cls, name, 0.0)
        for name in ("max_ksum_sigma", "al_beta", "al_min_sig", "al_min_sig_deconv"):
            check_positive(getattr(self, name), cls, name, 1e6)
        check_number(self.al_n_gauss, cls, "al_n_gauss", 1, 20, integer=True)
        degrees = check_numbers(self.al_degrees, cls, "al_degrees", 0, 20, integer=True)
        sigmas = check_numbers(self.al_sigmas, cls, "al_sigmas", 1e-3, 1000.0)
        object.__setattr__(self, "al_degrees", degrees)
        object.__setattr__(self, "al_sigmas", sigmas)
        _check(
            len(self.al_degrees) == self.al_n_gauss == len(self.al_sigmas),
            "al_n_gauss",
            "al_degrees and al_sigmas need al_n_gauss entries",
        )
        check_choice(
            self.df_regularization,
            cls,
            "df_regularization",
            ("centralDifference", "forwardDifference", None),
        )
        check_choice(self.df_stencil, cls, "df_stencil", (5, 9))
        orders = check_numbers(self.df_orders, cls, "df_orders", 0, 2, integer=True)
        object.__setattr__(self, "df_orders", orders)
        check_number(self.df_border_penalty, cls, "df_border_penalty", 0.0)
        check_number(self.df_lambda_value, cls, "df_lambda_value", 0.0)
        check_number(self.detection_threshold, cls, "detection_threshold", 3.0)
        check_positive(self.fp_grow_kernel_scaling, cls, "fp_grow_kernel_scaling", 1000.0)
        check_number(self.region_size, cls, "region_size", 256, 1 << 20, integer=True)
        check_choice(self.convolution, cls, "convolution", ("blockwise", "exact"))

    @property
    def pca(self) -> bool:
        return self.use_pca if self.use_pca is not None else self.basis == "delta-function"

    def fit_options(self, *, bad_bits: int) -> FitOptions:
        """The kernel fit's options (:func:`~coaddx.kernels.psfmatch.fit.fit_psf_matching_kernel`)
        for stamps whose masks flag bad pixels with ``bad_bits``."""
        return FitOptions(
            spatial_order=self.spatial_kernel_order,
            bg_order=self.spatial_bg_order,
            model=self.spatial_model,
            fit_background=self.fit_for_background,
            cell_size=(self.size_cell, self.size_cell),
            n_star_per_cell=self.n_star_per_cell,
            max_spatial_iterations=self.max_spatial_iterations,
            single_kernel_clipping=self.single_kernel_clipping,
            kernel_sum_clipping=self.kernel_sum_clipping,
            spatial_kernel_clipping=self.spatial_kernel_clipping,
            max_ksum_sigma=self.max_ksum_sigma,
            residual_mean_max=self.candidate_residual_mean_max,
            residual_std_max=self.candidate_residual_std_max,
            bad_bits=bad_bits,
            constant_variance=self.constant_variance_weighting,
            lam=self.df_lambda_value,
            use_pca=self.pca,
            n_pca=self.n_principal_components,
        )

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
