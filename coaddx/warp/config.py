"""Configuration of the warp step: MakeDirectWarp (``WarpConfig``) and MakePsfMatchedWarp's
ModelPsfMatch (``ModelPsfMatchConfig``); LSST defaults (algorithms.md 5.1-5.3, 6.5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from coaddx.kernels.warp import KERNELS
from coaddx.model.masks import DEFAULT_MASK_PLANES
from coaddx.validation import (
    check,
    check_bool,
    check_choice,
    check_number,
    check_numbers,
    check_positive,
    plane_names,
)

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
        cls = "ModelPsfMatchConfig"
        check_positive(self.model_psf_fwhm, cls, "model_psf_fwhm", 1000.0)
        check_number(self.kernel_size, cls, "kernel_size", 3, 1001, integer=True)
        check(self.kernel_size % 2 == 1, cls, "kernel_size", f"must be odd, got {self.kernel_size}")
        check_number(self.auto_pad_psf_to, cls, "auto_pad_psf_to", 1.0, 2.0)
        sigmas = check_numbers(self.al_sigmas, cls, "al_sigmas", 1e-3, 1000.0)
        degrees = check_numbers(self.al_degrees, cls, "al_degrees", 0, 20, integer=True)
        check(
            len(sigmas) == len(degrees) and len(sigmas) > 0,
            cls,
            "al_sigmas",
            "al_sigmas and al_degrees need equal, non-zero lengths",
        )
        object.__setattr__(self, "al_sigmas", sigmas)
        object.__setattr__(self, "al_degrees", degrees)
        check_choice(self.kernel_sum_fit, cls, "kernel_sum_fit", ("constrained", "lsst"))
        check_number(self.kernel_norm_penalty, cls, "kernel_norm_penalty", 0.0, 1e6)


@dataclass(frozen=True, kw_only=True)
class WarpConfig:
    """MakeDirectWarp configuration (LSST defaults, algorithms.md 5.1-5.2).

    Every field is checked on construction (:class:`~coaddx.errors.ConfigError` naming it):
    numbers are numbers (never bools), ``grow_full_mask_planes`` names standard planes
    (:data:`coaddx.model.masks.DEFAULT_MASK_PLANES`, the planes of a warp store).

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
    allow_mixed_bands : bool
        Accept visits of different bands in one :func:`~coaddx.make_warps` call (one store);
        by default that is an InputError naming the files and their bands, as a coadd mixes
        no bands (the detectors of one visit must always agree).
    """

    kernel: str = "lanczos3"
    interp_length: int = 10
    grow_full_mask_planes: tuple[str, ...] = ("EDGE",)
    border: int = 256
    calibrate: bool = True
    allow_mixed_bands: bool = False

    def __post_init__(self) -> None:
        cls = "WarpConfig"
        check_choice(self.kernel, cls, "kernel", KERNELS)
        check_number(self.interp_length, cls, "interp_length", 0, 1 << 16, integer=True)
        check_number(self.border, cls, "border", 0, 1 << 20, integer=True)
        check_bool(self.calibrate, cls, "calibrate")
        check_bool(self.allow_mixed_bands, cls, "allow_mixed_bands")
        planes = plane_names(
            self.grow_full_mask_planes, cls, "grow_full_mask_planes", DEFAULT_MASK_PLANES
        )
        object.__setattr__(self, "grow_full_mask_planes", planes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grow_full_mask_planes"] = list(self.grow_full_mask_planes)
        return out
