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
        _check(self.region_size >= 256, "region_size", "must be >= 256 pixels")

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
