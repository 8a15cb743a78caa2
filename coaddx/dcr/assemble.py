"""DcrAssembleCoadd: sub-filter coadds from the DCR forward model (algorithms.md 4).

:func:`assemble_dcr` fits N sub-filter images whose refracted sum reproduces every visit: the
model starts at template / N, each update forward-models every visit (split sub-filters,
amplified differences), sends the residuals back through the inverse shifts with the DCR
weights, regularises (per-iteration clamp and frequency) and damps by the progressive gain,
and the loop stops on the convergence metric exactly as LSST's (4.6). It runs on the tiles of
:mod:`coaddx.graph.dcr`; unlike LSST, which iterates each subregion on its own, the loop is
over the whole patch with the patch-wide metric, so the result does not depend on the tiling
(docs/design-notes.md, "DcrAssembleCoadd"). :func:`dcr_template` gives the forward model of
a DCR coadd for any observing condition.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from coaddx._version import __version__
from coaddx.coadd.compare_warp.stages import compare_warp_stages
from coaddx.dcr.config import DcrConfig
from coaddx.dcr.inputs import DcrVisits, check_dcr_inputs, dcr_visits, frame_of, mask_bits
from coaddx.errors import ConfigError, InputError
from coaddx.graph.artifacts import apply_alt_masks
from coaddx.graph.cube import LazyArray, as_dask_cube
from coaddx.graph.dcr import DcrSolver, dcr_sum, prepare_dcr_inputs
from coaddx.kernels.dcr import dcr_gain
from coaddx.kernels.dcr_tile import DcrTileOptions, regularization_halo
from coaddx.model.masks import bitmask, merge_mask_planes
from coaddx.model.refraction import (
    Observatory,
    Weather,
    dcr_shifts,
    image_parallactic_angle,
    subfilter_edges,
)
from coaddx.plan import dcr_held_bytes, dcr_task_bytes, plan_dcr_tiles

__all__ = ["assemble_dcr", "dcr_template", "run_iterations"]

#: ``progress(iteration, metric, gain)``: iteration 0 (gain 0) with the initial model's metric
#: once the inputs are prepared, then after every model update.
Progress = Callable[[int, float, float], None]


def _options(config: DcrConfig) -> DcrTileOptions:
    return DcrTileOptions(
        accelerate=float(config.accelerate_model),
        order=int(config.image_interp_order),
        split=bool(config.split_subfilters),
        split_threshold=float(config.split_threshold),
        clamp_iterations=float(config.regularize_model_iterations),
        max_diff=config.regularization_max_diff if config.regularize_model_frequency > 0 else 0.0,
        width=int(config.regularization_width),
        use_model_weights=bool(config.use_model_weights),
    )


def _metric(sums: np.ndarray) -> np.ndarray:
    """calculateConvergence: the mean over visits (last-but-one axis) of sum |I - T| s /
    sum |I + T| s / 2 (0 for a visit with no metric pixels)."""
    num, den = sums[..., 0], sums[..., 1]
    per_visit = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.asarray(per_visit.mean(axis=-1))


def run_iterations(
    solver: DcrSolver, config: DcrConfig, progress: Progress | None
) -> dict[str, Any]:
    """The loop control of 4.6 over the whole patch; returns the record for the attributes."""
    total, per_tile = solver.metric_sums()
    metrics, tile_metrics = [float(_metric(total))], [_metric(per_tile).tolist()]
    gains: list[float] = []
    if progress is not None:
        progress(0, metrics[0], 0.0)
    base = config.gain
    check, iteration, reason = 1.0, 0, "converged"
    while check > config.convergence_threshold or iteration <= config.min_iterations:
        if config.use_convergence:
            gain = dcr_gain(metrics, gains, base_gain=base, progressive=config.use_progressive_gain)
        else:  # the intent of useConvergence=False (algorithms.md 9.7): the base gain
            gain = base
        solver.step(gain)
        total, per_tile = solver.metric_sums()
        metric = float(_metric(total))
        if progress is not None:
            progress(iteration + 1, metric, gain)
        gains.append(gain)
        tile_metrics.append(_metric(per_tile).tolist())
        if config.use_convergence:
            if metric == 0:
                metrics.append(metric)
                reason = "metric is zero"
                break
            check = (metrics[-1] - metric) / metric
            metrics.append(metric)
            if check < 0 and iteration > config.min_iterations:
                reason = "diverged"
                break
        else:
            metrics.append(metric)
        if iteration > config.max_iterations:
            reason = "maximum iterations"
            break
        iteration += 1
    return {
        "convergence": metrics,
        "convergence_per_tile": tile_metrics,
        "gains": gains,
        "n_iterations": len(gains),
        "stop": reason,
    }


def _weather_attr(weather: Weather | None) -> dict[str, float] | None:
    if weather is None:
        return None
    return {
        "temperature": weather.temperature,
        "pressure": weather.pressure,
        "humidity": weather.humidity,
    }


def assemble_dcr(
    direct: xr.Dataset,
    template: xr.Dataset,
    config: DcrConfig,
    *,
    progress: Progress | None = None,
) -> xr.Dataset:
    """DCR sub-filter coadds of direct warps (LSST DcrAssembleCoadd).

    Parameters
    ----------
    direct : xarray.Dataset
        Direct warps over ``(visit, y, x)`` (:func:`coaddx.open_warps` or in memory) with the
        per-visit variables ``parallactic_angle`` and ``elevation`` or ``airmass`` (and
        optionally ``rotation_angle``, ``temperature``, ``pressure``, ``humidity``) and a
        DETECTED mask plane (the convergence metric's pixels).
    template : xarray.Dataset
        A coadd on the same grid (``image``, ``variance``, ``mask`` over ``(y, x)``, e.g.
        :func:`coaddx.assemble` of the same warps) whose mask has DETECTED.
    config : DcrConfig
        ``effective_wavelength`` and ``bandwidth`` are required.
    progress : callable, optional
        ``progress(iteration, metric, gain)``: ``(0, initial metric, 0.0)`` once the inputs
        are prepared, then after every model update.

    Returns
    -------
    xarray.Dataset
        ``image`` (the amplified sub-filter models, 4.7), ``variance`` (template / N),
        ``mask`` (the template's) and ``n_image`` over ``(subfilter, y, x)``, with coordinates
        ``subfilter``, ``wavelength_low``, ``wavelength_high`` (nm); ``coadd`` (their sum) and
        ``template`` (the input coadd image) over ``(y, x)``; per visit ``elevation``,
        ``parallactic_angle``, ``zenith_angle_in_patch`` and ``dcr_shift`` (visit, subfilter,
        axis: dy, dx; pixels). Attributes: ``config``, ``convergence`` (patch-wide metric
        before and after every update), ``convergence_per_tile``, ``gains``,
        ``n_iterations``, ``stop``, ``plan``, what :func:`dcr_template` needs (``dcr``) and
        ``provenance``.

    The iterations are computed here (each gain depends on the metrics so far); the output
    planes are dask arrays over the persisted model.
    """
    check_dcr_inputs(direct, template, config)
    visits = dcr_visits(direct, config)
    bits = mask_bits(direct, template, config)
    options = _options(config)
    halo = regularization_halo(options.width)
    weights_radius = int(4.0 * config.model_weights_width + 0.5) + 1
    shape = (direct.sizes["y"], direct.sizes["x"])
    tiles, tile = plan_dcr_tiles(
        shape,
        config.subregion_size,
        buffer=visits.buffer,
        halo=halo,
        weights_radius=weights_radius,
    )
    chunks = (direct.sizes["visit"], *tile)
    inputs = prepare_dcr_inputs(
        as_dask_cube(direct["image"], chunks),
        _masks(direct, template, config, chunks),
        as_dask_cube(template["image"].expand_dims("visit"), (1, *tile))[0],
        as_dask_cube(template["mask"].expand_dims("visit"), (1, *tile))[0],
        bad_bits=bits["bad"],
        metric_bits=bits["metric"],
        template_bad_bits=bits["template_bad"],
        detected_bit=bits["detected"],
        weight_bits=bits["weights"],
        tile=tile,
    )
    ny, nx = shape
    b = visits.buffer
    solver = DcrSolver(
        inputs,
        tiles,
        n_subfilters=config.n_subfilters,
        shifts=visits.shifts,
        forward_shifts=visits.split if config.split_subfilters else visits.shifts,
        options=options,
        model_weights_width=float(config.model_weights_width),
        metric_region=(b, ny - b, b, nx - b),
        frequency_region=(5, ny - 5, 5, nx - 5),
    )
    record = run_iterations(solver, config, progress)
    record["plan"] = {
        "tile": list(tile),
        "n_tiles": sum(len(row) for row in tiles),
        "buffer": b,
        "halo": halo,
        "task_bytes": dcr_task_bytes(
            direct.sizes["visit"], config.n_subfilters, tile, buffer=b, halo=halo
        ),
        "held_bytes": dcr_held_bytes(
            direct.sizes["visit"], config.n_subfilters, shape, tile, halo=halo
        ),
    }
    return _dataset(direct, template, config, visits, solver, record, tile)


def _masks(
    direct: xr.Dataset, template: xr.Dataset, config: DcrConfig, chunks: tuple[int, int, int]
) -> LazyArray:
    """The warps' masks, with CompareWarp's alternative masks when ``find_artifacts`` (4.5:
    findArtifacts on the direct warps against the input coadd)."""
    mask = as_dask_cube(direct["mask"], chunks)
    if not config.find_artifacts:
        return mask
    cw = config.artifacts
    planes = merge_mask_planes(direct.attrs["mask_planes"], ("CLIPPED", cw.streak_mask_name))
    stages = compare_warp_stages(
        direct.assign_attrs(mask_planes=planes),
        direct.assign_attrs(mask_planes=planes),
        cw,
        template=template,
    )
    return apply_alt_masks(
        mask,
        stages.flag_cube,
        stages.artifacts,
        chunks=chunks,
        clear=bitmask(planes, cw.assemble.bad_mask_planes, strict=False),
        no_data=bitmask(planes, "NO_DATA"),
        clipped=bitmask(planes, "CLIPPED"),
        edge=bitmask(planes, "EDGE"),
        streak=bitmask(planes, cw.streak_mask_name),
    )


def _dataset(
    direct: xr.Dataset,
    template: xr.Dataset,
    config: DcrConfig,
    visits: DcrVisits,
    solver: DcrSolver,
    record: dict[str, Any],
    tile: tuple[int, int],
) -> xr.Dataset:
    n = config.n_subfilters
    edges = subfilter_edges(config.effective_wavelength, config.bandwidth, n)
    images = solver.amplified(float(config.accelerate_model))
    dims3 = ("subfilter", "y", "x")
    t_var = as_dask_cube(template["variance"].expand_dims("visit"), (1, *tile))[0]
    t_mask = as_dask_cube(template["mask"].expand_dims("visit"), (1, *tile))[0]
    coords: dict[str, Any] = {
        "subfilter": ("subfilter", np.arange(n)),
        "wavelength_low": ("subfilter", edges[:, 0]),
        "wavelength_high": ("subfilter", edges[:, 1]),
        "visit": ("visit", visits.visit),
    }
    for axis in ("y", "x"):
        if axis in direct.coords:
            coords[axis] = (axis, direct[axis].values)
    ds = xr.Dataset(
        {
            "image": (dims3, images.astype(np.float32)),
            "variance": (dims3, (t_var / n)[None].repeat(n, axis=0).astype(np.float32)),
            "mask": (dims3, t_mask[None].repeat(n, axis=0)),
            "n_image": (dims3, solver.n_image),
            "coadd": (("y", "x"), images.sum(axis=0).astype(np.float32)),
            "template": (("y", "x"), solver.inputs.template.astype(np.float32)),
            "elevation": ("visit", visits.elevation),
            "parallactic_angle": ("visit", visits.parallactic_angle),
            "zenith_angle_in_patch": ("visit", visits.theta),
            "dcr_shift": (("visit", "subfilter", "axis"), visits.shifts),
        },
        coords=coords,
    )
    obs = config.observatory
    ds.attrs.update(
        {
            "mask_planes": dict(template.attrs["mask_planes"]),
            "config": config.to_dict(),
            **record,
            "dcr": {
                "effective_wavelength": config.effective_wavelength,
                "bandwidth": config.bandwidth,
                "n_subfilters": n,
                "pixel_scale": visits.pixel_scale,
                "observatory": {
                    "latitude": obs.latitude,
                    "longitude": obs.longitude,
                    "height": obs.height,
                },
                "weather": _weather_attr(config.weather),
                "split_subfilters": config.split_subfilters,
                "split_threshold": config.split_threshold,
                "image_interp_order": config.image_interp_order,
                "buffer": visits.buffer,
            },
            "provenance": {
                "operation": "assemble_dcr",
                "inputs": direct.attrs.get("store", "in-memory"),
                "template": template.attrs.get("store", "in-memory"),
                "visits": [int(v) for v in visits.visit],
                "coaddx_version": __version__,
                "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            },
        }
    )
    if "wcs" in direct.attrs:
        ds.attrs["wcs"] = direct.attrs["wcs"]
    return ds


def dcr_template(
    dcr_coadd: xr.Dataset,
    *,
    elevation: float,
    parallactic_angle: float,
    weather: Weather | None = None,
    rotation_angle: float = 0.0,
) -> xr.DataArray:
    """The DCR-matched template of a DCR coadd for one observing condition (lazy).

    The sub-filter images (already the amplified model of 4.7: not amplified again) are
    shifted by the DCR of ``elevation`` and ``parallactic_angle`` (degrees) and summed, with
    split sub-filters as the coadd was built. The observatory, wavelengths, pixel scale and the
    weather default come from the coadd's ``dcr`` attribute; the direction from its ``wcs``
    (``rotation_angle`` applies only without one).
    """
    from_attrs = dcr_coadd.attrs.get("dcr")
    if not isinstance(from_attrs, dict) or "image" not in dcr_coadd:
        raise InputError(
            "dcr_template needs a DCR coadd from coaddx.assemble_dcr (its 'dcr' attrs)"
        )
    if not (math.isfinite(elevation) and 0.0 < elevation <= 90.0):
        raise ConfigError(f"elevation must be in (0, 90] degrees, got {elevation}")
    if not math.isfinite(parallactic_angle):
        raise ConfigError(f"parallactic_angle must be finite, got {parallactic_angle}")
    a = from_attrs
    obs = Observatory(**a["observatory"])
    if weather is None and a.get("weather"):
        weather = Weather(**a["weather"])
    wcs, _, cx, cy = frame_of(dcr_coadd, float(a["pixel_scale"]))
    theta = image_parallactic_angle(
        parallactic_angle, wcs, rotation_angle=rotation_angle, x=cx, y=cy
    )
    split = bool(a["split_subfilters"])
    shifts = dcr_shifts(
        effective_wavelength=float(a["effective_wavelength"]),
        bandwidth=float(a["bandwidth"]),
        n_subfilters=int(a["n_subfilters"]),
        elevation=float(elevation),
        parallactic_angle=theta,
        pixel_scale=float(a["pixel_scale"]),
        observatory=obs,
        weather=weather,
        split=split,
    )
    depth = math.ceil(float(np.max(np.abs(shifts)))) + 1
    images = as_dask_cube(dcr_coadd["image"], (dcr_coadd.sizes["subfilter"], 512, 512))
    model = dcr_sum(
        images.astype(np.float64),
        shifts,
        depth=depth,
        order=int(a["image_interp_order"]),
        split_threshold=float(a["split_threshold"]),
    )
    coords = {k: dcr_coadd[k] for k in ("y", "x") if k in dcr_coadd.coords}
    return xr.DataArray(
        model,
        dims=("y", "x"),
        coords=coords,
        name="dcr_template",
        attrs={"elevation": float(elevation), "parallactic_angle": float(parallactic_angle)},
    )
