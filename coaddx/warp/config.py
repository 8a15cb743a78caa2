"""Configuration of the warp step: MakeDirectWarp (``WarpConfig``) and MakePsfMatchedWarp's
ModelPsfMatch (``ModelPsfMatchConfig``); LSST defaults (algorithms.md 5.1-5.3, 6.5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from coaddx.errors import ConfigError
from coaddx.kernels.warp import KERNELS

__all__ = ["ModelPsfMatchConfig", "WarpConfig"]


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


@dataclass(frozen=True, kw_only=True)
class WarpConfig:
    """MakeDirectWarp configuration (LSST defaults, algorithms.md 5.1-5.2).

    Parameters
    ----------
    kernel : {"lanczos3", "lanczos4", "bilinear", "nearest"}
        Warping kernel of image and variance (``warpingKernelName``).
    interp_length : int
        The pixel mapping is evaluated exactly every ``interp_length`` pixels and interpolated
        in between (``interpLength``); 0 or 1 evaluates it at every pixel.
    grow_full_mask_planes : tuple of str
        Planes spread over the full kernel footprint (``growFullMask`` = EDGE); other planes
        spread over the bilinear footprint.
    border : int
        Exposures are selected if they overlap the patch grown by this many pixels
        (MakeDirectWarp ``border``).
    calibrate : bool
        Multiply image by the exposure's nJy-per-count calibration and variance by its square.
    """

    kernel: str = "lanczos3"
    interp_length: int = 10
    grow_full_mask_planes: tuple[str, ...] = ("EDGE",)
    border: int = 256
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ConfigError(f"WarpConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not isinstance(self.interp_length, int) or self.interp_length < 0:
            raise ConfigError(
                f"WarpConfig.interp_length must be an integer >= 0, got {self.interp_length!r}"
            )
        if not isinstance(self.border, int) or self.border < 0:
            raise ConfigError(f"WarpConfig.border must be an integer >= 0, got {self.border!r}")
        object.__setattr__(self, "grow_full_mask_planes", tuple(self.grow_full_mask_planes))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grow_full_mask_planes"] = list(self.grow_full_mask_planes)
        return out
