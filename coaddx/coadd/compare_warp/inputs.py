"""CompareWarp's inputs, checked and normalised once: the two warp cubes on one grid, the
PSF-matched visits of the direct ones, the plans (stacking subregions, detection tiles) and the
PSF size that footprints grow by.

The PSF-matched planes are asked for in the layout the per-visit detection task reads (whole
visit planes); a Dataset opened from a warp store is read again in those chunks by
:func:`coaddx.io.zarr.views.reopen_warps`, anything else is sliced and rechunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from coaddx.coadd.assemble import plan_warps
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.constants import FWHM_TO_SIGMA
from coaddx.errors import InputError, SchemaError
from coaddx.graph.cube import LazyArray, lazy_layers
from coaddx.io.schema import validate_warps
from coaddx.io.zarr.views import reopen_warps
from coaddx.kernels.moments import adaptive_sigma
from coaddx.model.psf import model_psf
from coaddx.plan import StackPlan, detection_tile
from coaddx.settings import memory_per_task

__all__ = ["CompareWarpInputs", "check_same_grid", "compare_warp_inputs", "psf_sigma"]


@dataclass(frozen=True)
class CompareWarpInputs:
    """Normalised inputs: the direct warps, the PSF-matched warps of the direct visits (in
    their order, for the template), per-visit planes of the PSF-matched cubes for the
    per-visit tasks (``scale``), each direct visit's index in them (``position``), the
    stacking plan, the detection tiles (within the per-visit task) and the PSF size."""

    direct: xr.Dataset
    matched: xr.Dataset
    scale: dict[str, LazyArray]
    position: dict[int, int]
    plan: StackPlan
    detect_tile: tuple[int, int]
    sigma_psf: float

    @property
    def tile(self) -> tuple[int, int]:
        """The stacking subregion (also the tiles of the template)."""
        return self.plan.subregion

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the grid."""
        return (self.direct.sizes["y"], self.direct.sizes["x"])

    def index(self, visit: int) -> int | None:
        """The index of direct ``visit`` in the PSF-matched cubes, None without a warp there."""
        return self.position.get(int(visit))


def psf_sigma(matched: xr.Dataset) -> float:
    """sigma_psf of the PSF-matched warps: adaptive moments of the model PSF (``model_psf_fwhm``
    attribute), else a Gaussian of the widest per-visit ``psf_fwhm``."""
    fwhm = matched.attrs.get("model_psf_fwhm")
    if fwhm is not None and np.isfinite(float(fwhm)) and float(fwhm) > 0:
        f = float(fwhm)
        return adaptive_sigma(model_psf(f, 2 * int(4 * f) + 1))
    if "psf_fwhm" in matched and np.isfinite(matched["psf_fwhm"].values).any():
        return float(np.nanmax(matched["psf_fwhm"].values)) * FWHM_TO_SIGMA
    raise InputError(
        "psf_matched: no 'model_psf_fwhm' attribute and no per-visit 'psf_fwhm' "
        "variable, so the PSF size that footprints grow by is unknown"
    )


def check_same_grid(direct: xr.Dataset, matched: xr.Dataset) -> None:
    """The direct and PSF-matched warps share one grid (shape and ``y``/``x`` coordinates)."""
    shapes = [tuple(ds.sizes[d] for d in ("y", "x")) for ds in (direct, matched)]
    if shapes[0] != shapes[1]:
        raise SchemaError(
            f"direct warps are {shapes[0][0]} x {shapes[0][1]} but psf_matched "
            f"warps are {shapes[1][0]} x {shapes[1][1]}; they must share a grid"
        )
    for d in ("y", "x"):
        if (
            d in direct.coords
            and d in matched.coords
            and not np.array_equal(direct[d].values, matched[d].values)
        ):
            raise SchemaError(f"direct and psf_matched warps have different {d} coordinates")


def _planes_in(ds: xr.Dataset, chunks: tuple[int, int, int]) -> dict[str, LazyArray]:
    view = reopen_warps(ds, dict(zip(("visit", "y", "x"), chunks, strict=True)))
    return lazy_layers(view if view is not None else ds, chunks)


def compare_warp_inputs(
    direct: xr.Dataset, psf_matched: xr.Dataset, config: CompareWarpConfig
) -> CompareWarpInputs:
    """Check the two warp cubes (schema, one grid, some PSF-matched visit) and plan the work."""
    validate_warps(direct, where="assemble_compare_warp: direct")
    validate_warps(psf_matched, where="assemble_compare_warp: psf_matched")
    check_same_grid(direct, psf_matched)
    visits = [int(v) for v in direct["visit"].values]
    position = {int(v): i for i, v in enumerate(psf_matched["visit"].values)}
    present = tuple(v in position for v in visits)
    if not any(present):
        raise InputError(f"no PSF-matched warp for any direct visit {visits}")
    ny, nx = direct.sizes["y"], direct.sizes["x"]
    plan = plan_warps(direct, config.subregion_size)
    matched = psf_matched.sel(visit=[v for v, p in zip(visits, present, strict=True) if p])
    tile = detection_tile(
        plan,
        (ny, nx),
        explicit=config.subregion_size is not None,
        budget_bytes=memory_per_task(),
    )
    return CompareWarpInputs(
        direct,
        matched,
        _planes_in(psf_matched, (1, ny, nx)),
        position,
        plan,
        tile,
        psf_sigma(psf_matched),
    )
