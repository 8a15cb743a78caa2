"""DcrAssembleCoadd's inputs: the checks of the warps and the template, each visit's observing
conditions and its DCR shifts in the patch frame (algorithms.md 4.3, 4.5 prepareDcrInputs).

Per-visit metadata comes from the warp Dataset's per-visit variables: ``elevation`` (degrees;
else from ``airmass`` by the plane-parallel secant, elevation = 90 - arccos(1 / airmass)),
``parallactic_angle`` (degrees), optionally ``rotation_angle`` (only for a Dataset without a
``wcs``: a patch grid needs no camera rotation on top) and ``temperature`` / ``pressure`` /
``humidity`` (all three, else the config's weather, else the altitude default of 4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from astropy.coordinates import SkyCoord

from coaddx.dcr.config import DcrConfig
from coaddx.errors import ConfigError, InputError
from coaddx.model.masks import bitmask
from coaddx.model.refraction import Weather, dcr_shifts, image_parallactic_angle
from coaddx.model.skymap import wcs_from_header_string

__all__ = ["DcrVisits", "check_dcr_inputs", "dcr_visits", "frame_of", "mask_bits"]

_LAYERS = ("image", "variance", "mask")


@dataclass(frozen=True)
class DcrVisits:
    """Each visit's conditions and shifts: ``shifts`` (V, N, 2) unsplit, ``split`` (V, N, 2, 2),
    ``buffer`` the DCR buffer (px) covering both."""

    visit: np.ndarray
    elevation: np.ndarray
    parallactic_angle: np.ndarray
    theta: np.ndarray  # direction to the zenith in the patch frame (degrees)
    airmass: np.ndarray
    weather: tuple[Weather | None, ...]
    shifts: np.ndarray
    split: np.ndarray
    buffer: int
    pixel_scale: float


def check_dcr_inputs(direct: xr.Dataset, template: xr.Dataset, config: Any) -> None:
    """Raise a clear error for a config that is not a DcrConfig, missing layers or a template
    on another grid."""
    if not isinstance(config, DcrConfig):
        raise ConfigError(f"config must be a coaddx.DcrConfig, got {type(config).__name__}")
    if not isinstance(direct, xr.Dataset) or not isinstance(template, xr.Dataset):
        raise InputError("assemble_dcr needs the warps and the template as xarray Datasets")
    for name in _LAYERS:
        if name not in direct or direct[name].dims != ("visit", "y", "x"):
            raise InputError(f"the warps have no {name!r} layer over (visit, y, x)")
        if name not in template or template[name].dims != ("y", "x"):
            raise InputError(f"the template has no {name!r} plane over (y, x)")
    if direct.sizes["visit"] < 1:
        raise InputError("the warps hold no visits")
    shape = (direct.sizes["y"], direct.sizes["x"])
    if (template.sizes["y"], template.sizes["x"]) != shape:
        raise InputError(
            f"the template is {template.sizes['y']} x {template.sizes['x']} px, the warps "
            f"{shape[0]} x {shape[1]}: they must be on one grid"
        )
    for axis in ("y", "x"):
        if axis in direct.coords and axis in template.coords:
            if not np.array_equal(direct[axis].values, template[axis].values):
                raise InputError(f"the template's {axis} coordinates differ from the warps'")
    for ds, what in ((direct, "warps"), (template, "template")):
        if "mask_planes" not in ds.attrs:
            raise InputError(f"the {what} have no mask_planes attribute")


def frame_of(direct: xr.Dataset, default_scale: float) -> tuple[Any, float, float, float]:
    """The patch WCS (None without a ``wcs`` attribute), the pixel scale (arcsec/px) at the
    patch centre and the centre's WCS pixel (x, y)."""
    text = direct.attrs.get("wcs")
    ny, nx = direct.sizes["y"], direct.sizes["x"]
    if not text:
        return None, float(default_scale), (nx - 1) / 2, (ny - 1) / 2
    try:
        wcs = wcs_from_header_string(str(text))
    except Exception as exc:
        raise InputError(f"the warps' wcs attribute cannot be read: {exc}") from exc
    x = float(direct["x"].values[nx // 2]) if "x" in direct.coords else nx // 2
    y = float(direct["y"].values[ny // 2]) if "y" in direct.coords else ny // 2
    pts = wcs.wcs_pix2world(np.array([[x - 0.5, y], [x + 0.5, y], [x, y - 0.5], [x, y + 0.5]]), 0)
    sky = SkyCoord(pts[:, 0], pts[:, 1], unit="deg")
    scale = math.sqrt(sky[0].separation(sky[1]).arcsec * sky[2].separation(sky[3]).arcsec)
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"the warps' wcs has no pixel scale at the patch centre ({x}, {y})")
    return wcs, scale, x, y


def _visit_value(direct: xr.Dataset, name: str, index: int) -> float:
    if name not in direct.variables or direct[name].dims != ("visit",):
        return math.nan
    value = direct[name].values[index]
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def dcr_visits(direct: xr.Dataset, config: DcrConfig) -> DcrVisits:
    """Each visit's conditions and DCR shifts (``InputError`` naming the visit and the field
    when one is missing)."""
    wcs, scale, cx, cy = frame_of(direct, config.pixel_scale)
    n = direct.sizes["visit"]
    visits = direct["visit"].values if "visit" in direct.coords else np.arange(n)
    rows: dict[str, list[Any]] = {k: [] for k in ("elev", "q", "theta", "airmass", "weather")}
    shifts, split = [], []
    for i in range(n):
        visit = int(visits[i])
        elevation = _visit_value(direct, "elevation", i)
        airmass = _visit_value(direct, "airmass", i)
        if not math.isfinite(elevation):
            if not (math.isfinite(airmass) and airmass >= 1.0):
                raise InputError(
                    f"visit {visit}: no elevation and no airmass >= 1 (per-visit variables "
                    "'elevation' or 'airmass'); DcrAssembleCoadd needs one"
                )
            elevation = 90.0 - math.degrees(math.acos(1.0 / airmass))
        if not 0.0 < elevation <= 90.0:
            raise InputError(f"visit {visit}: elevation {elevation} deg is not in (0, 90]")
        if not math.isfinite(airmass):
            airmass = 1.0 / math.sin(math.radians(elevation))
        q = _visit_value(direct, "parallactic_angle", i)
        if not math.isfinite(q):
            raise InputError(
                f"visit {visit}: no parallactic_angle (per-visit variable); DcrAssembleCoadd "
                "needs it for the direction of the DCR"
            )
        rotation = _visit_value(direct, "rotation_angle", i)
        rotation = rotation if math.isfinite(rotation) else 0.0
        theta = image_parallactic_angle(q, wcs, rotation_angle=rotation, x=cx, y=cy)
        met = [_visit_value(direct, k, i) for k in ("temperature", "pressure", "humidity")]
        weather = Weather(*met) if all(math.isfinite(v) for v in met) else config.weather
        kwargs = dict(
            effective_wavelength=config.effective_wavelength,
            bandwidth=config.bandwidth,
            n_subfilters=config.n_subfilters,
            elevation=elevation,
            parallactic_angle=theta,
            pixel_scale=scale,
            observatory=config.observatory,
            weather=weather,
        )
        shifts.append(dcr_shifts(**kwargs))  # type: ignore[arg-type]
        split.append(dcr_shifts(**kwargs, split=True))  # type: ignore[arg-type]
        for key, value in zip(rows, (elevation, q, theta, airmass, weather), strict=True):
            rows[key].append(value)
    shifts_a, split_a = np.array(shifts), np.array(split)
    reach = max(float(np.max(np.abs(shifts_a))), float(np.max(np.abs(split_a))))
    return DcrVisits(
        visit=np.asarray(visits, np.int64),
        elevation=np.array(rows["elev"]),
        parallactic_angle=np.array(rows["q"]),
        theta=np.array(rows["theta"]),
        airmass=np.array(rows["airmass"]),
        weather=tuple(rows["weather"]),
        shifts=shifts_a,
        split=split_a,
        buffer=math.ceil(reach) + 1,
        pixel_scale=scale,
    )


def mask_bits(direct: xr.Dataset, template: xr.Dataset, config: DcrConfig) -> dict[str, int]:
    """The andMask and convergence bits of the warps, and the template's bad bits, DETECTED
    (the noise estimates' cut, literally DETECTED as in LSST, algorithms.md 9.8) and
    convergence bits (the model weights'); ``InputError`` when a plane the solve needs is
    missing."""
    planes, t_planes = direct.attrs["mask_planes"], template.attrs["mask_planes"]
    metric = bitmask(planes, config.convergence_mask_planes, strict=False)
    if config.use_convergence and metric == 0:
        raise InputError(
            "the warps have none of the convergence mask planes "
            f"{list(config.convergence_mask_planes)} (DETECTED: the calexps' detections); the "
            "convergence metric is computed on them"
        )
    detected = bitmask(t_planes, "DETECTED", strict=False)  # the noise cut: LSST's literal
    weights = bitmask(t_planes, config.convergence_mask_planes, strict=False)
    if detected == 0 or (config.use_model_weights and weights == 0):
        raise InputError(
            "the template has no DETECTED mask plane: DcrAssembleCoadd's model weights and noise "
            "estimates need the template's detections"
        )
    return {
        "bad": bitmask(planes, config.bad_mask_planes, strict=False),
        "metric": metric,
        "template_bad": bitmask(t_planes, config.bad_mask_planes, strict=False),
        "detected": detected,
        "weights": weights,
    }
