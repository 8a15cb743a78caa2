"""DcrAssembleCoadd on dask: tiles with halos, one model update per pass (algorithms.md 4.5-4.7).

The model is a dask array (sub-filter, y, x) chunked in the DCR tiles of
:func:`coaddx.plan.plan_dcr_tiles`. One pass of :class:`DcrSolver` builds, per tile, the
metric sums of the current model and its un-regularised update (:func:`update_tile`, reading
the visits and the model over the tile grown by the halos), reduces the patch-wide noise of the
frequency regularisation over the tiles, regularises each tile (:func:`regularize_tile`) and
reduces the noise of the next metric; the driver (:mod:`coaddx.dcr.assemble`) computes the
metric sums between passes to choose the gain and to stop. The per-visit inputs are prepared
once (image with bad pixels at 0, a one-byte code of usable and metric pixels) and persisted;
no task holds more than one tile of every visit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed, delayed

from coaddx.kernels.dcr import apply_dcr, dcr_nimage
from coaddx.kernels.dcr_tile import (
    GOOD,
    METRIC,
    DcrTileOptions,
    Region,
    crop,
    model_weights_tile,
    region_moments,
    regularize_tile,
    update_tile,
)
from coaddx.plan import DcrTile

__all__ = [
    "DcrInputs",
    "DcrSolver",
    "dcr_sum",
    "prepare_dcr_inputs",
]


def _std(sums: np.ndarray) -> float:
    n, total, squares = (float(v) for v in sums)
    if n < 2:
        return 0.0
    mean = total / n
    return float(np.sqrt(max(squares / n - mean * mean, 0.0)))


@dataclass(frozen=True)
class DcrInputs:
    """The prepared, persisted inputs of a DCR solve (dask arrays in the tile chunks)."""

    image: da.Array  # (V, Y, X) float32, 0 where not usable
    code: da.Array  # (V, Y, X) uint8: GOOD | METRIC
    template: da.Array  # (Y, X) float64, 0 where not finite
    quiet: da.Array  # (Y, X) bool: template pixel with no bad or DETECTED bit
    detected: da.Array  # (Y, X) bool: template pixels with a convergence plane (model weights)


def _code(image: np.ndarray, mask: np.ndarray, bad: int, metric: int) -> np.ndarray:
    good = ((mask & bad) == 0) & np.isfinite(image)
    return good.astype(np.uint8) * GOOD | (good & ((mask & metric) != 0)).astype(np.uint8) * METRIC


def prepare_dcr_inputs(
    image: da.Array,
    mask: da.Array,
    template_image: da.Array,
    template_mask: da.Array,
    *,
    bad_bits: int,
    metric_bits: int,
    template_bad_bits: int,
    detected_bit: int,
    weight_bits: int,
    tile: tuple[int, int],
) -> DcrInputs:
    """The visits' image (bad or non-finite pixels at 0) and code, and the template's image,
    quiet pixels (no bad or ``detected_bit``: the noise estimates) and model-weight pixels
    (``weight_bits``, the convergence planes), rechunked to ``tile`` and persisted."""
    chunks = (image.shape[0], *tile)
    image = image.rechunk(chunks)
    mask = mask.rechunk(chunks)
    code = da.map_blocks(_code, image, mask, bad_bits, metric_bits, dtype=np.uint8)
    clean = da.where((code & GOOD) != 0, image, 0).astype(np.float32)
    t_image = template_image.rechunk(tile).astype(np.float64)
    t_mask = template_mask.rechunk(tile)
    template = da.where(da.isfinite(t_image), t_image, 0.0)
    quiet = (t_mask & (template_bad_bits | detected_bit)) == 0
    detected = (t_mask & weight_bits) != 0
    persisted = dask.persist(clean, code, template, quiet, detected)
    return DcrInputs(*persisted)


def _block(rows: list[list[Any]], tiles: list[list[DcrTile]], lead: tuple[int, ...], dtype: Any):
    """A dask array from per-tile delayed cores (``lead`` leading dims)."""
    return da.block(
        [
            [
                da.from_delayed(
                    d,
                    (*lead, t.core[1] - t.core[0], t.core[3] - t.core[2]),
                    dtype=dtype,
                )
                for d, t in zip(row, trow, strict=True)
            ]
            for row, trow in zip(rows, tiles, strict=True)
        ]
    )


def _region(array: da.Array, region: Region) -> da.Array:
    return array[..., region[0] : region[1], region[2] : region[3]]


def _nimage_tile(code: np.ndarray, shifts: np.ndarray, origin: tuple[int, int], core: Region):
    unusable = ((code & GOOD) == 0).astype(np.uint8)
    n_image, weights = dcr_nimage(unusable, shifts, bad_bits=1)
    return np.stack([crop(n_image, origin, core), crop(weights, origin, core)])


def _normalised(weights: np.ndarray, peak: float) -> np.ndarray:
    return weights / peak if peak > 0 else np.zeros_like(weights)


class DcrSolver:
    """The DCR model on tiles and its updates, pass by pass (see the module docstring).

    ``shifts`` (V, N, 2) are the unsplit DCR shifts of the visits, ``forward_shifts`` those of
    the forward model ((V, N, 2, 2) when split); ``noise_regions`` are the patch regions of the
    metric's noise (shrunk by the buffer) and of the frequency regularisation's (shrunk by 5).
    """

    def __init__(
        self,
        inputs: DcrInputs,
        tiles: list[list[DcrTile]],
        *,
        n_subfilters: int,
        shifts: np.ndarray,
        forward_shifts: np.ndarray,
        options: DcrTileOptions,
        model_weights_width: float,
        metric_region: Region,
        frequency_region: Region,
    ) -> None:
        self.inputs = inputs
        self.tiles = tiles
        self.n = n_subfilters
        self.shifts = np.asarray(shifts, np.float64)
        self.forward_shifts = np.asarray(forward_shifts, np.float64)
        self.options = options
        self.metric_region = metric_region
        self.frequency_region = frequency_region
        self.flat = [t for row in tiles for t in row]
        nimage = [
            [
                delayed(_nimage_tile)(
                    _region(inputs.code, t.n_image), self.shifts, t.n_image[::2], t.core
                )
                for t in row
            ]
            for row in tiles
        ]
        both = _block(nimage, tiles, (2, n_subfilters), np.float64)
        self.n_image = both[0].astype(np.int32)
        self.dcr_weights = both[1]
        if options.use_model_weights:
            raw = _block(
                [
                    [
                        delayed(model_weights_tile)(
                            _region(inputs.detected, t.weights),
                            origin=t.weights[::2],
                            core=t.core,
                            width=model_weights_width,
                        )
                        for t in row
                    ]
                    for row in tiles
                ],
                tiles,
                (),
                np.float64,
            )
            self.model_weights = da.map_blocks(_normalised, raw, raw.max(), dtype=np.float64)
        else:
            self.model_weights = da.ones(inputs.template.shape, chunks=inputs.template.chunks)
        self.n_image, self.dcr_weights, self.model_weights = dask.persist(
            self.n_image, self.dcr_weights, self.model_weights
        )
        template = inputs.template
        self.model = dask.persist(
            da.stack([template / n_subfilters] * n_subfilters).rechunk(
                (n_subfilters, *template.chunksize)
            )
        )[0]
        self.metric_noise = self._noise(
            [
                delayed(_core_moments)(
                    _region(self.model[1], t.core),
                    _region(inputs.quiet, t.core),
                    t.core,
                    metric_region,
                )
                for t in self.flat
            ]
        )
        self.updates: list[Any] = list(
            dask.persist(*self._update_pass(self.model, self.metric_noise))
        )

    # -- one pass ------------------------------------------------------------------------------

    @staticmethod
    def _noise(sums: Sequence[Delayed]) -> Delayed:
        stacked = da.stack([da.from_delayed(s, (3,), dtype=np.float64) for s in sums])
        total = stacked.sum(axis=0, split_every=8)
        return delayed(_std)(total)

    def _update_pass(self, model: da.Array, metric_noise: Delayed) -> list[Any]:
        inp, out = self.inputs, []
        for t in self.flat:
            out.append(
                delayed(update_tile, nout=3)(
                    _region(inp.image, t.image),
                    _region(inp.code, t.image),
                    _region(model, t.model),
                    _region(self.dcr_weights, t.update),
                    self.shifts,
                    self.forward_shifts,
                    _region(inp.quiet, t.core),
                    image_origin=t.image[::2],
                    model_origin=t.model[::2],
                    update_region=t.update,
                    core=t.core,
                    noise_region=self.frequency_region,
                    metric_noise=metric_noise,
                    options=self.options,
                )
            )
        return out

    def metric_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The current model's metric sums: patch-wide (V, 2) by a tree sum over the tiles,
        and per tile (T, V, 2)."""
        v = self.shifts.shape[0]
        stacked = da.stack([da.from_delayed(u[1], (v, 2), dtype=np.float64) for u in self.updates])
        total, per_tile = dask.compute(stacked.sum(axis=0, split_every=8), stacked)
        return np.asarray(total), np.asarray(per_tile)

    def step(self, gain: float) -> None:
        """One model update with ``gain``; the metric sums of the new model are then ready."""
        inp = self.inputs
        frequency_noise = delayed(_divided)(
            self._noise([u[2] for u in self.updates]), 2 * self.options.width
        )
        cores: list[Any] = []
        for t, u in zip(self.flat, self.updates, strict=True):
            cores.append(
                delayed(regularize_tile, nout=2)(
                    u[0],
                    _region(self.model, t.update),
                    _region(inp.template, t.core),
                    _region(self.model_weights, t.core),
                    _region(inp.quiet, t.core),
                    origin=t.update[::2],
                    core=t.core,
                    noise_region=self.metric_region,
                    frequency_noise=frequency_noise,
                    gain=float(gain),
                    options=self.options,
                )
            )
        rows, k = [], 0
        for row in self.tiles:
            rows.append([c[0] for c in cores[k : k + len(row)]])
            k += len(row)
        model = _block(rows, self.tiles, (self.n,), np.float64)
        metric_noise = self._noise([c[1] for c in cores])
        updates = self._update_pass(model, metric_noise)
        model, *updates = dask.persist(model, *updates)
        self.model, self.updates = model, list(updates)

    # -- results -------------------------------------------------------------------------------

    def amplified(self, accelerate: float) -> da.Array:
        """The stored sub-filter images (4.7): the model amplified around its mean."""
        if accelerate <= 1:
            return self.model
        ref = self.model.mean(axis=0, keepdims=True)
        return (self.model - ref) * accelerate + ref


def _core_moments(values: np.ndarray, quiet: np.ndarray, core: Region, region: Region):
    return region_moments(values, quiet, core=core, region=region)


def _divided(value: float, by: float) -> float:
    return value / by


def _shifted(block: np.ndarray, shifts: np.ndarray, order: int, split_threshold: float):
    return np.stack(
        [
            apply_dcr(image, shift, order=order, split_threshold=split_threshold)
            for image, shift in zip(block, shifts, strict=True)
        ]
    )


def dcr_sum(
    images: da.Array, shifts: np.ndarray, *, depth: int, order: int, split_threshold: float
) -> da.Array:
    """Sub-filter images (N, Y, X) shifted by ``shifts`` ((N, 2) or (N, 2, 2)) and summed: a
    forward model on the patch (``scipy.ndimage.shift`` at its edges), with halos of ``depth``
    px (at least the largest shift component plus one)."""
    images = images.rechunk((images.shape[0], *images.chunksize[1:]))
    shifted = da.map_overlap(
        _shifted,
        images,
        depth={0: 0, 1: depth, 2: depth},
        boundary="none",  # the patch edge is scipy's: mode "constant", as the solve had it
        dtype=np.float64,
        shifts=np.asarray(shifts, np.float64),
        order=order,
        split_threshold=split_threshold,
    )
    return shifted.sum(axis=0)
