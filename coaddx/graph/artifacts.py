"""CompareWarp's detection and footprint rules as dask tasks (algorithms.md 3.2-3.5), through
a scratch store of per-visit planes (:class:`Scratch`, e.g.
:class:`coaddx.io.zarr.scratch_planes.ScratchPlanes`), so that no task, and nothing held
between tasks, grows with the number of visits:

* one task per visit (:func:`visit_flags`) reads its whole PSF-matched plane, finds its
  ScaleVariance factor, detects its difference with the template on haloed tiles, writes its
  packed flags and its factor to the scratch store and returns only its share of the sums over
  visits (kept candidates, GOOD pixels, EDGE spans), summed as a tree (:func:`sum_counts`);
* one task per visit (:func:`write_artifacts`) reads its flags back, finds its artifacts
  against the sums (the rules need whole footprints, so it holds the visit's whole plane) and
  writes the byte the final stack needs (:func:`coaddx.kernels.artifacts.final_spans`);
* every later reader reads those bytes per block once all are written (:func:`all_written`):
  the final stack's masks (:func:`apply_spans`), the per-visit masks (:func:`spans_flag`).

The writing tasks are ``dask.delayed`` (with fixed keys): array graph optimisation may copy
blockwise tasks into each consumer, which must not happen to a task that writes. The
alternative masks of in-memory planes go onto the direct warps with :func:`apply_alt_masks`
(DcrAssembleCoadd).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np

from coaddx.kernels import artifacts as ka
from coaddx.kernels.detect import NAN_SPAN
from coaddx.kernels.scale_variance import ExceedsMaxVarianceScaleError, scale_variance_factor

__all__ = [
    "SCRATCH_ARRAYS",
    "Scratch",
    "all_written",
    "apply_alt_masks",
    "apply_spans",
    "read_spans",
    "read_values",
    "scratch_created",
    "set_where",
    "spans_flag",
    "sum_counts",
    "sum_planes",
    "visit_flags",
    "visit_planes",
    "write_artifacts",
]

log = logging.getLogger("coaddx.compare_warp")

#: The scratch arrays: each visit's packed detection flags, then its final spans.
FLAGS, SPANS = "flags", "spans"
SCRATCH_ARRAYS = (FLAGS, SPANS)

#: Visits summed per task of the tree reductions over visits.
SPLIT_EVERY = 4


def apply_alt_masks(
    mask: da.Array,
    flags: da.Array,
    artifacts: da.Array,
    *,
    chunks: tuple[int, int, int],
    clear: int,
    no_data: int,
    clipped: int,
    edge: int,
    streak: int,
) -> da.Array:
    """:func:`coaddx.kernels.artifacts.apply_alt_masks` of a ``(visit, y, x)`` mask cube in
    ``chunks``, with the flags and artifacts cubes read in the same chunks."""
    return da.map_blocks(
        ka.apply_alt_masks,
        mask,
        flags.rechunk(chunks),
        artifacts.rechunk(chunks),
        dtype=np.int32,
        clear=clear,
        no_data=no_data,
        clipped=clipped,
        edge=edge,
        streak=streak,
    )


# -- through a scratch store: no task holds every visit ---------------------------------------


class Scratch(Protocol):
    """The per-visit scratch store the tasks below write and read (``(visit, y, x)`` uint8
    planes in ``chunks`` and one value per visit)."""

    shape: tuple[int, ...]

    def create(self) -> None: ...
    def write(self, name: str, index: int, plane: np.ndarray) -> None: ...
    def read(self, name: str, visits: slice, rows: slice, cols: slice) -> np.ndarray: ...
    def write_value(self, index: int, value: float) -> None: ...
    def read_values(self) -> np.ndarray: ...


def _chunk(array: da.Array) -> Any:
    """The one chunk of ``array`` as a Delayed of its key in the unoptimised graph: every task
    handed it shares that one task (a dask array passed to ``dask.delayed`` is finalised and
    optimised per call, so each would compute its own copy, the template once per visit)."""
    (block,) = array.to_delayed(optimize_graph=False).ravel()
    return block


def visit_planes(cube: da.Array, shape: tuple[int, int]) -> list[Any]:
    """Each visit's whole plane of a ``(visit, y, x)`` cube, for :func:`visit_flags`: the
    cube's own blocks (Delayed, no task added) when it is chunked one visit plane per block
    (a warp store reopened so; ``(1, y, x)``), else a slice of it in one chunk."""
    if cube.chunks[0] == (1,) * cube.shape[0] and cube.chunks[1:] == ((shape[0],), (shape[1],)):
        return list(cube.to_delayed(optimize_graph=False)[:, 0, 0])
    return [cube[i].rechunk(shape) for i in range(cube.shape[0])]


def _block(plane: Any) -> Any:
    return _chunk(plane) if isinstance(plane, da.Array) else plane


def _create(scratch: Scratch) -> np.ndarray:
    scratch.create()
    return np.zeros((), np.uint8)


def scratch_created(scratch: Scratch) -> Any:
    """A token (delayed): the scratch store is made (every writer depends on it)."""
    return dask.delayed(_create, pure=True)(scratch)


def _factor(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, **kwargs: Any) -> float:
    """ScaleVariance of one visit; a failure is logged and ignored (factor 1), as in LSST."""
    try:
        return scale_variance_factor(image, variance, mask, **kwargs)
    except ExceedsMaxVarianceScaleError as exc:
        log.warning("ScaleVariance failed (%s); the variance is not rescaled", exc)
        return 1.0


def _visit_task(
    created: np.ndarray,
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    t_image: np.ndarray,
    t_variance: np.ndarray,
    *,
    scratch: Scratch,
    index: int,
    scale: dict[str, Any] | None,
    tile: tuple[int, int],
    prefilter_ratio: float | None,
    detect: dict[str, Any],
) -> np.ndarray:
    image, variance, mask = (p.reshape(p.shape[-2:]) for p in (image, variance, mask))
    factor = _factor(image, variance, mask, **scale) if scale is not None else 1.0
    packed = ka.detect_plane(
        image, variance, mask, t_image, t_variance, factor, tile=tile, **detect
    )
    scratch.write(FLAGS, index, packed)
    scratch.write_value(index, factor)
    return ka.visit_counts(packed, prefilter_ratio)


def _missing_task(created: np.ndarray, *, scratch: Scratch, index: int) -> np.ndarray:
    ny, nx = scratch.shape[1:]
    scratch.write(SPANS, index, np.full((ny, nx), NAN_SPAN, np.uint8))
    scratch.write_value(index, float("nan"))
    return np.zeros((3, ny, nx), np.uint8)


def visit_flags(
    scratch: Scratch,
    created: Any,
    index: int,
    planes: tuple[Any, Any, Any] | None,
    template: tuple[da.Array, da.Array],
    *,
    scale: dict[str, Any] | None,
    tile: tuple[int, int],
    prefilter_ratio: float | None,
    **detect: Any,
) -> Any:
    """One task (delayed) for visit ``index``: its ScaleVariance factor (``scale``: the
    kernel's keyword arguments; None: 1), its difference with the template (2-D, one chunk
    each) detected on haloed ``tile`` tiles (:func:`coaddx.kernels.artifacts.detect_plane`
    with ``detect``), the flags and the factor written to ``scratch``; its value is its
    ``(3, y, x)`` counts (:func:`coaddx.kernels.artifacts.visit_counts`). ``planes`` (its
    whole PSF-matched image, variance and mask, one chunk each) None: no PSF-matched warp, a
    NO_DATA span, factor NaN; each a 2-D dask array or a block of :func:`visit_planes`."""
    if planes is None:
        return dask.delayed(_missing_task, pure=True)(created, scratch=scratch, index=index)
    return dask.delayed(_visit_task, pure=True)(
        created,
        *(_block(p) for p in planes),
        *(_chunk(t) for t in template),
        scratch=scratch,
        index=index,
        scale=scale,
        tile=tile,
        prefilter_ratio=prefilter_ratio,
        detect=detect,
    )


def _add(*parts: np.ndarray) -> np.ndarray:
    out = parts[0].astype(np.int32)
    for p in parts[1:]:
        out += p
    return out


def sum_counts(counts: Sequence[Any]) -> Any:
    """The sums over visits of their :func:`visit_flags` counts (delayed, ``(3, y, x)``
    int32: epoch count, PSF-matched n_image, visits with an EDGE span), a tree of
    :data:`SPLIT_EVERY` visits per task."""
    level = list(counts)
    while len(level) > 1:
        level = [
            dask.delayed(_add, pure=True)(*level[i : i + SPLIT_EVERY])
            for i in range(0, len(level), SPLIT_EVERY)
        ]
    return level[0] if len(counts) > 1 else dask.delayed(_add, pure=True)(level[0])


def _plane(sums: np.ndarray, *, k: int) -> np.ndarray:
    return sums[k]


def sum_planes(sums: Any, shape: tuple[int, int]) -> tuple[da.Array, da.Array, da.Array]:
    """The three planes of :func:`sum_counts` as 2-D int32 arrays (one chunk)."""
    cube = da.from_delayed(sums, (3, *shape), np.int32)
    return tuple(da.map_blocks(_plane, cube, drop_axis=0, dtype=np.int32, k=k) for k in range(3))


def _artifacts_task(
    sums: np.ndarray,
    template_footprints: np.ndarray | None,
    *,
    scratch: Scratch,
    index: int,
    kernel_kwargs: dict[str, Any],
) -> np.ndarray:
    packed = scratch.read(FLAGS, slice(index, index + 1), slice(None), slice(None))[0]
    art = ka.visit_artifacts(packed, sums[0], sums[1], template_footprints, **kernel_kwargs)
    scratch.write(SPANS, index, ka.final_spans(packed, art))
    return np.zeros((), np.uint8)


def write_artifacts(
    scratch: Scratch,
    index: int,
    sums: Any,
    template_footprints: da.Array | None,
    **kernel_kwargs: Any,
) -> Any:
    """One task (delayed, a token): visit ``index``'s artifacts
    (:func:`coaddx.kernels.artifacts.visit_artifacts` of its flags, read back, against the
    ``sums`` of :func:`sum_counts`), its :func:`~coaddx.kernels.artifacts.final_spans`
    written over its flags."""
    return dask.delayed(_artifacts_task, pure=True)(
        sums,
        None if template_footprints is None else _chunk(template_footprints),
        scratch=scratch,
        index=index,
        kernel_kwargs=kernel_kwargs,
    )


def _all(*tokens: Any) -> np.ndarray:
    return np.zeros((), np.uint8)


def all_written(tokens: Sequence[Any]) -> da.Array:
    """A 0-d token: every one of ``tokens`` (the writes of the scratch planes) is done."""
    return da.from_delayed(dask.delayed(_all, pure=True)(*tokens), (), np.uint8)


def _read_block(
    done: np.ndarray, *, scratch: Scratch, shift: int, bits: int, out: Any, block_info: Any
) -> np.ndarray:
    (v0, v1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    spans = scratch.read(SPANS, slice(v0, v1), slice(y0, y1), slice(x0, x1))
    if shift:
        spans = spans >> np.uint8(shift)
    return (spans & np.uint8(bits)).astype(out, copy=False)


def _read(
    scratch: Scratch, done: da.Array, chunks: tuple[Any, ...], shift: int, bits: int, dtype: Any
) -> da.Array:
    blocks = da.core.normalize_chunks(chunks, tuple(scratch.shape))
    return da.map_blocks(
        _read_block,
        done,
        chunks=blocks,
        new_axis=[0, 1, 2],
        meta=np.empty((0, 0, 0), dtype),
        scratch=scratch,
        shift=shift,
        bits=bits,
        out=dtype,
        dtype=dtype,
    )


def read_spans(
    scratch: Scratch, done: da.Array, chunks: tuple[Any, ...], *, shift: int = 0, bits: int = 255
) -> da.Array:
    """The scratch planes as a ``(visit, y, x)`` uint8 array in ``chunks`` (each block one
    read task after ``done``), shifted right by ``shift`` and ANDed with ``bits``."""
    return _read(scratch, done, chunks, shift, bits, np.uint8)


def spans_flag(scratch: Scratch, done: da.Array, chunks: tuple[Any, ...], bit: int) -> da.Array:
    """Where the scratch planes have ``bit`` (e.g.
    :data:`~coaddx.kernels.artifacts.SPAN_ARTIFACT`), a boolean ``(visit, y, x)`` array in
    ``chunks`` read after ``done``."""
    return _read(scratch, done, chunks, 0, bit, bool)


def _apply_block(
    mask: np.ndarray,
    done: np.ndarray,
    *,
    scratch: Scratch,
    tables: tuple[np.ndarray, np.ndarray],
    block_info: Any,
) -> np.ndarray:
    (v0, v1), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    spans = scratch.read(SPANS, slice(v0, v1), slice(y0, y1), slice(x0, x1))
    return ka.apply_spans(mask, spans, tables)


def apply_spans(
    mask: da.Array,
    scratch: Scratch,
    done: da.Array,
    *,
    clear: int,
    no_data: int,
    clipped: int,
    edge: int,
    streak: int,
) -> da.Array:
    """A ``(visit, y, x)`` mask cube with the alternative masks of the scratch planes applied
    (:func:`coaddx.kernels.artifacts.apply_spans`), each block reading its spans after
    ``done``."""
    tables = ka.alt_mask_tables(
        clear=clear, no_data=no_data, clipped=clipped, edge=edge, streak=streak
    )
    return da.map_blocks(_apply_block, mask, done, dtype=np.int32, scratch=scratch, tables=tables)


def _values(done: np.ndarray, *, scratch: Scratch) -> np.ndarray:
    return scratch.read_values()


def read_values(scratch: Scratch, done: da.Array) -> da.Array:
    """The per-visit values of the scratch store, ``(visit,)`` float64 in one chunk."""
    return da.map_blocks(
        _values,
        done,
        chunks=((scratch.shape[0],),),
        new_axis=[0],
        meta=np.empty((0,), np.float64),
        scratch=scratch,
    )


def set_where(mask: da.Array, where: da.Array, bits: int) -> da.Array:
    """``mask`` (2-D) with ``bits`` set where ``where`` (bool, any chunks)."""
    return mask | da.where(where.rechunk(mask.chunks), np.int32(bits), np.int32(0))
