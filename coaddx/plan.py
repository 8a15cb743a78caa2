"""Pure planning: subregion sizes from a per-task memory budget (no dask, no I/O).

One stacking task holds every visit of one ``S x S`` subregion: the three input planes
(image float32, variance float32, mask int32 = 12 bytes per pixel-visit), the working copies
made on the way in (a decoded chunk, an alternative-mask OR, a dtype conversion) and the packed
output. The planner picks the largest ``S`` whose working set fits the budget, aligned to the
storage chunk so that each task reads whole chunks.

Measured (``tests/test_plan_memory.py``, tracemalloc): a stacking task whose reads are fused into
it peaks at the input block plus its outputs, about half of :func:`task_bytes`; reading through a
rechunk (storage chunks smaller than the subregion) peaks at up to twice the block, which
``INPUT_COPIES`` covers. What a task does not see is what a *worker* holds besides its running
tasks: the stacked planes of every coadd pixel until interpolation over NO_DATA can start (its
fallback value is a statistic of the whole image) and that fallback task itself.
:func:`worker_bytes` adds both; :func:`task_budget` turns a worker memory limit into a per-task
budget, and :func:`warp_task_bytes` plans one warping task. :func:`plan_warp_stack` plans the
stack of warps held in given dask chunks, :func:`detection_tile` the tiles of CompareWarp's
per-visit detection (one visit per task: ``DETECT_BYTES_PER_PIXEL``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coaddx.errors import ConfigError
from coaddx.kernels.weight_stats import histogram_bytes

__all__ = [
    "DCR_BYTES_PER_PIXEL_VISIT",
    "DETECT_BYTES_PER_PIXEL",
    "DcrTile",
    "StackPlan",
    "dcr_held_bytes",
    "dcr_task_bytes",
    "detection_tile",
    "plan_dcr_tiles",
    "plan_stack",
    "plan_warp_stack",
    "task_budget",
    "task_bytes",
    "warp_task_bytes",
    "worker_bytes",
]

BYTES_PER_PIXEL_VISIT = 12  # image f4 + variance f4 + mask i4
INPUT_COPIES = 2.0  # the block itself + one transient copy (chunk decode / mask OR)
OUTPUT_BYTES_PER_PIXEL = (
    4 * 8 + 16
)  # packed float64 (value, variance, mask, n_image) + final planes
KERNEL_BYTES_PER_PIXEL_VISIT = 0.25  # per-row sort buffers, amortised over the block
MIN_SUBREGION = 64
#: Held per coadd pixel until interpolation: the packed stack result (16 B) and the finished
#: mask (4 B); without interpolation the planes are written out as they come (an upper bound).
HELD_BYTES_PER_PIXEL = 20
#: The interpolation fallback task (a statistic of the whole coadd image): the image blocks
#: (4 B), their concatenation (4 B), the finite test (1 B), the finite values (4 B) and the
#: selection's copy (4 B) per coadd pixel.
FALLBACK_BYTES_PER_PIXEL = 17
#: distributed starts spilling when a worker's process memory passes 70 % of its limit (and
#: managed data past 60 %); the planner keeps a worker's plan under this fraction.
WORKER_SAFE_FRACTION = 0.6
#: Resident memory of an idle worker process with coaddx, numba and its kernels loaded
#: (measured 300 MiB on the project machine; re-measured by the CLI when it knows better).
WORKER_BASELINE_BYTES = 320 * 2**20
#: What a worker process adds once, the first time it runs a step: numba loads the compiled
#: kernels from its cache (measured 46 MiB for stacking, about 116 MiB for warping, whose
#: first run also imports the WCS machinery). Commands add it to the per-worker plan they
#: report; it is not part of a task.
KERNEL_LOAD_BYTES = 128 * 2**20
#: One warping task (one visit), measured with tracemalloc (tests/test_plan_memory.py): per
#: patch pixel the composite planes (12 B) and their good-pixel test; per detector pixel its
#: planes as read (12-18 B), its calibrated copy (8 B), its NO_DATA test and its warped box
#: (12 B; the previous detector's box is still alive while the next one is warped); a fixed
#: part for the chunk encoder and the weight statistics' key histograms (their worst case,
#: :func:`coaddx.kernels.weight_stats.histogram_bytes`; their compact copy of the composite
#: variance, 5 B a patch pixel, fits in the patch part's slack).
WARP_PATCH_BYTES, WARP_DETECTOR_BYTES = 16, 44
WARP_FIXED_BYTES = 4 * 2**20 + histogram_bytes()


@dataclass(frozen=True)
class StackPlan:
    """Subregion size and the memory one task is planned to use."""

    subregion: tuple[int, int]
    task_bytes: int
    budget_bytes: int
    n_tasks: int
    shape: tuple[int, int] = (0, 0)

    def describe(self) -> str:
        sy, sx = self.subregion
        return (
            f"subregions {sy} x {sx} ({self.n_tasks} tasks), planned "
            f"{self.task_bytes / 2**20:.0f} MiB per task of a "
            f"{self.budget_bytes / 2**20:.0f} MiB budget"
        )

    @property
    def held_bytes(self) -> int:
        """Bytes the whole cluster holds for the stacked planes until interpolation."""
        return self.shape[0] * self.shape[1] * HELD_BYTES_PER_PIXEL

    @property
    def fallback_bytes(self) -> int:
        """Bytes of the one task computing the interpolation fallback over the whole image."""
        return self.shape[0] * self.shape[1] * FALLBACK_BYTES_PER_PIXEL


def task_bytes(n_visits: int, sy: int, sx: int) -> int:
    """Planned peak bytes of one stacking task over ``n_visits`` x ``sy`` x ``sx``."""
    per_pv = BYTES_PER_PIXEL_VISIT * INPUT_COPIES + KERNEL_BYTES_PER_PIXEL_VISIT
    return math.ceil(n_visits * sy * sx * per_pv + sy * sx * OUTPUT_BYTES_PER_PIXEL)


def _aligned(limit: int, chunk: int, extent: int) -> int:
    """Largest size <= limit that is a multiple of ``chunk`` or a divisor-like fraction of it."""
    limit = max(MIN_SUBREGION, min(limit, extent))
    if limit >= extent:
        return extent
    if limit >= chunk:
        return (limit // chunk) * chunk
    size = chunk
    while size > limit and size % 2 == 0 and size // 2 >= MIN_SUBREGION:
        size //= 2
    return min(size, limit) if size > limit else size


def plan_stack(
    n_visits: int,
    shape: tuple[int, int],
    *,
    budget_bytes: int,
    storage_chunk: int | None = None,
    subregion: tuple[int, int] | int | None = None,
) -> StackPlan:
    """Plan the subregion size of a stack of ``n_visits`` over an image of ``shape``.

    Parameters
    ----------
    n_visits : int
        Number of visits in every task.
    shape : (int, int)
        Coadd ``(rows, columns)``.
    budget_bytes : int
        Memory one task may use.
    storage_chunk : int, optional
        Spatial chunk of the store; the subregion is aligned to it when possible.
    subregion : int or (int, int), optional
        A fixed size (``AssembleConfig.subregion_size``); checked against the budget.
    """
    if n_visits < 1:
        raise ConfigError(f"cannot plan a stack of {n_visits} visits")
    if budget_bytes <= 0:
        raise ConfigError(f"memory budget must be > 0 bytes, got {budget_bytes}")
    ny, nx = shape
    if subregion is not None:
        sy, sx = (subregion, subregion) if isinstance(subregion, int) else subregion
        sy, sx = min(int(sy), ny), min(int(sx), nx)
    else:
        per_pixel = task_bytes(n_visits, 1, 1)
        side = int(math.sqrt(budget_bytes / per_pixel))
        if side < MIN_SUBREGION:
            need = task_bytes(n_visits, MIN_SUBREGION, MIN_SUBREGION)
            raise ConfigError(
                f"memory budget {budget_bytes / 2**20:.0f} MiB per task is too small for "
                f"{n_visits} visits: the smallest subregion ({MIN_SUBREGION} px) needs "
                f"{need / 2**20:.0f} MiB; raise coaddx.memory-per-task"
            )
        chunk = storage_chunk or side
        sy = _aligned(side, chunk, ny)
        sx = _aligned(side, chunk, nx)
    planned = task_bytes(n_visits, sy, sx)
    n_tasks = math.ceil(ny / sy) * math.ceil(nx / sx)
    return StackPlan(
        subregion=(sy, sx),
        task_bytes=planned,
        budget_bytes=int(budget_bytes),
        n_tasks=n_tasks,
        shape=(int(ny), int(nx)),
    )


def plan_warp_stack(
    n_visits: int,
    shape: tuple[int, int],
    *,
    chunks: tuple[tuple[int, ...], ...] | None,
    budget_bytes: int,
    subregion: tuple[int, int] | int | None = None,
) -> StackPlan:
    """:func:`plan_stack` for warps held in dask ``chunks`` (per dimension, ``(visit, y, x)``;
    None for arrays in memory): aligned to their row chunk when every visit is in one chunk
    (a store opened for stacking), else planned freely."""
    storage = None
    if chunks is not None and tuple(chunks[0]) == (n_visits,):
        storage = int(max(chunks[1]))
    return plan_stack(
        n_visits, shape, budget_bytes=budget_bytes, storage_chunk=storage, subregion=subregion
    )


#: Planned bytes per pixel of a detection task (one visit): PSF-matched planes, template
#: planes, their haloed copies, the scaled variance, flags, footprint masks and labels.
DETECT_BYTES_PER_PIXEL = 64


def detection_tile(
    plan: StackPlan, shape: tuple[int, int], *, explicit: bool, budget_bytes: int
) -> tuple[int, int]:
    """Tiles of CompareWarp's per-visit detection: the stacking subregion when the user fixed it
    (``explicit``), else the largest multiple of it whose single-visit working set fits the
    per-task budget (a task holds one visit, not all of them, so the tiles can be much larger:
    fewer tasks and halos)."""
    if explicit:
        return plan.subregion
    side = int((budget_bytes / DETECT_BYTES_PER_PIXEL) ** 0.5)
    sy, sx = (min(n, max(s, side // s * s)) for s, n in zip(plan.subregion, shape, strict=True))
    return sy, sx


def worker_bytes(plan: StackPlan, *, threads: int, n_workers: int = 1, baseline: int = 0) -> int:
    """Planned peak memory of one worker running ``plan``: ``threads`` stacking tasks at once
    (fewer if the plan has fewer),
    its share of the stacked planes held until interpolation, the fallback task (which runs on
    one worker) and the process ``baseline``."""
    if threads < 1 or n_workers < 1:
        raise ConfigError(f"threads and n_workers must be >= 1, got {threads} and {n_workers}")
    running = min(threads, plan.n_tasks) if plan.n_tasks > 0 else threads
    return int(
        baseline + running * plan.task_bytes + plan.held_bytes // n_workers + plan.fallback_bytes
    )


def task_budget(
    memory_limit: int,
    *,
    threads: int,
    shape: tuple[int, int],
    n_workers: int = 1,
    baseline: int = WORKER_BASELINE_BYTES,
    fraction: float = WORKER_SAFE_FRACTION,
) -> int:
    """Per-task budget that keeps :func:`worker_bytes` under ``fraction`` of a worker's
    ``memory_limit`` (below the level where distributed spills to disk).

    Parameters
    ----------
    memory_limit : int
        Memory limit of one worker, bytes.
    threads : int
        Tasks a worker runs at once.
    shape : (int, int)
        Coadd shape, for the planes held until interpolation.
    n_workers : int
        Workers sharing the held planes.
    baseline : int
        Resident memory of an idle worker process.
    fraction : float
        Part of the limit the plan may use.
    """
    if memory_limit <= 0:
        raise ConfigError(f"worker memory limit must be > 0 bytes, got {memory_limit}")
    empty = StackPlan((1, 1), 0, 0, 0, (int(shape[0]), int(shape[1])))
    fixed = worker_bytes(empty, threads=threads, n_workers=n_workers, baseline=baseline)
    usable = int(fraction * memory_limit) - fixed
    if usable <= 0:
        raise ConfigError(
            f"a worker memory limit of {memory_limit / 2**20:.0f} MiB leaves nothing for stacking "
            f"tasks: the process ({baseline / 2**20:.0f} MiB) and the {shape[0]} x {shape[1]} "
            f"coadd planes it holds need {fixed / 2**20:.0f} MiB of the "
            f"{fraction * memory_limit / 2**20:.0f} MiB usable; give workers more memory"
        )
    return usable // threads


def warp_task_bytes(patch_shape: tuple[int, int], detector_shapes: list[tuple[int, int]]) -> int:
    """Planned peak bytes of one warping task: one visit's detectors onto a patch (direct
    warps only; PSF matching adds its convolution's planes)."""
    if not detector_shapes:
        return 0
    patch = int(patch_shape[0]) * int(patch_shape[1])
    detectors = sum(int(ny) * int(nx) for ny, nx in detector_shapes)
    return int(patch * WARP_PATCH_BYTES + detectors * WARP_DETECTOR_BYTES + WARP_FIXED_BYTES)


#: Planned bytes per pixel of a calibration task (:func:`coaddx.calibrate_exposures`): the
#: image, mask and variance read (12 B), sep's float64 image, error and background-subtracted
#: copies (24 B), the background and its rms (8 B), the segmentation map (4 B), the new mask
#: and its temporaries (12 B), the footprints and the big-endian copies astropy writes (16 B),
#: with 20 B of slack for the two detections' transients.
CALIBRATE_BYTES_PER_PIXEL = 96
CALIBRATE_FIXED_BYTES = 64 * 2**20


def calibrate_task_bytes(shape: tuple[int, int]) -> int:
    """Planned peak bytes of one calibration task on an exposure of ``shape``."""
    return int(int(shape[0]) * int(shape[1]) * CALIBRATE_BYTES_PER_PIXEL + CALIBRATE_FIXED_BYTES)


#: Planned bytes per pixel-visit of a DCR update task: the visit's image (f4) and code (u1) as
#: held, its float64 copy, forward model and residual, and one shifted residual (5 x 8 B).
DCR_BYTES_PER_PIXEL_VISIT = 45
#: ... and per pixel-sub-filter: the model with its halo, the step, the DCR weights, the new
#: and old models and the regularisation's temporaries (10 x 8 B).
DCR_BYTES_PER_PIXEL_SUBFILTER = 80


@dataclass(frozen=True)
class DcrTile:
    """One DCR tile: its ``core`` and the regions (``(y0, y1, x0, x1)``, clipped to the patch)
    its tasks read: ``update`` = core + the regularisation halo, ``image`` = update + the DCR
    buffer (visits), ``model`` = update + twice the buffer, ``n_image`` = core + the buffer
    (the DCR weights), ``weights`` = core + the model-weight filter radius."""

    core: tuple[int, int, int, int]
    update: tuple[int, int, int, int]
    image: tuple[int, int, int, int]
    model: tuple[int, int, int, int]
    n_image: tuple[int, int, int, int]
    weights: tuple[int, int, int, int]


def _grow(
    core: tuple[int, int, int, int], by: int, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = core
    return (max(y0 - by, 0), min(y1 + by, shape[0]), max(x0 - by, 0), min(x1 + by, shape[1]))


def plan_dcr_tiles(
    shape: tuple[int, int],
    tile: tuple[int, int],
    *,
    buffer: int,
    halo: int,
    weights_radius: int,
) -> tuple[list[list[DcrTile]], tuple[int, int]]:
    """The DCR tiles of a patch, as rows of tiles (row-major), and their size.

    ``tile`` (rows, columns) is cut to the patch; ``buffer`` is the DCR buffer (largest shift
    component, rounded up, plus one), ``halo`` the regularisation halo and ``weights_radius``
    the model-weight filter's reach.
    """
    ny, nx = shape
    ty, tx = (min(int(t), n) for t, n in zip(tile, shape, strict=True))
    if ty < 1 or tx < 1:
        raise ConfigError(f"DCR tiles must be at least 1 x 1 px, got {tile}")
    rows = []
    for y0 in range(0, ny, ty):
        row = []
        for x0 in range(0, nx, tx):
            core = (y0, min(y0 + ty, ny), x0, min(x0 + tx, nx))
            update = _grow(core, halo, shape)
            row.append(
                DcrTile(
                    core=core,
                    update=update,
                    image=_grow(update, buffer, shape),
                    model=_grow(update, 2 * buffer, shape),
                    n_image=_grow(core, buffer, shape),
                    weights=_grow(core, weights_radius, shape),
                )
            )
        rows.append(row)
    return rows, (ty, tx)


def dcr_task_bytes(
    n_visits: int, n_subfilters: int, tile: tuple[int, int], *, buffer: int, halo: int
) -> int:
    """Planned peak memory of one DCR update task (:data:`DCR_BYTES_PER_PIXEL_VISIT` per
    pixel-visit of its image region, :data:`DCR_BYTES_PER_PIXEL_SUBFILTER` per pixel-sub-filter
    of its model region)."""
    py = tile[0] + 2 * (halo + 2 * buffer)
    px = tile[1] + 2 * (halo + 2 * buffer)
    pixels = py * px
    return int(
        pixels
        * (n_visits * DCR_BYTES_PER_PIXEL_VISIT + n_subfilters * DCR_BYTES_PER_PIXEL_SUBFILTER)
    )


#: Held for the whole DCR solve, per pixel-visit: the prepared image (f4) and code (u1).
DCR_HELD_BYTES_PER_PIXEL_VISIT = 5
#: ... and per pixel-sub-filter: the model and the next one (2 x 8 B), the persisted
#: un-regularised updates over the tiles with their halos (8 B times the overlap), the DCR
#: weights (8 B) and the n_image (4 B); per pixel the template, its quiet and model-weight
#: pixels and the model weights (8 + 1 + 1 + 8 B).
DCR_HELD_BYTES_PER_PIXEL_SUBFILTER = 28
DCR_HELD_BYTES_PER_PIXEL = 18


def dcr_held_bytes(
    n_visits: int,
    n_subfilters: int,
    shape: tuple[int, int],
    tile: tuple[int, int],
    *,
    halo: int,
) -> int:
    """What a DCR solve keeps in (cluster) memory between passes: the prepared visits, the
    models, the updates over the haloed tiles and the per-pixel planes (see the constants)."""
    pixels = shape[0] * shape[1]
    overlap = ((tile[0] + 2 * halo) * (tile[1] + 2 * halo)) / (tile[0] * tile[1])
    per_sub = DCR_HELD_BYTES_PER_PIXEL_SUBFILTER + 8 * min(overlap, 4.0)
    return int(
        pixels
        * (
            n_visits * DCR_HELD_BYTES_PER_PIXEL_VISIT
            + n_subfilters * per_sub
            + DCR_HELD_BYTES_PER_PIXEL
        )
    )
