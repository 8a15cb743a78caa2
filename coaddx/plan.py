"""Pure planning: subregion sizes from a per-task memory budget (no dask, no I/O).

One stacking task holds every visit of one ``S x S`` subregion: the three input planes
(image float32, variance float32, mask int32 = 12 bytes per pixel-visit), the working copies
made on the way in (a decoded chunk, an alternative-mask OR, a dtype conversion) and the packed
output. The planner picks the largest ``S`` whose working set fits the budget, aligned to the
storage chunk so that each task reads whole chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["StackPlan", "plan_stack", "task_bytes"]

BYTES_PER_PIXEL_VISIT = 12  # image f4 + variance f4 + mask i4
INPUT_COPIES = 2.0  # the block itself + one transient copy (chunk decode / mask OR)
OUTPUT_BYTES_PER_PIXEL = 4 * 8 + 16  # packed float64 (value, variance, mask, n_image) + final planes
KERNEL_BYTES_PER_PIXEL_VISIT = 0.25  # per-row sort buffers, amortised over the block
MIN_SUBREGION = 64


@dataclass(frozen=True)
class StackPlan:
    """Subregion size and the memory one task is planned to use."""

    subregion: tuple[int, int]
    task_bytes: int
    budget_bytes: int
    n_tasks: int

    def describe(self) -> str:
        sy, sx = self.subregion
        return (f"subregions {sy} x {sx} ({self.n_tasks} tasks), planned "
                f"{self.task_bytes / 2**20:.0f} MiB per task of a {self.budget_bytes / 2**20:.0f} MiB budget")


def task_bytes(n_visits: int, sy: int, sx: int) -> int:
    """Planned peak bytes of one stacking task over ``n_visits`` x ``sy`` x ``sx``."""
    per_pv = BYTES_PER_PIXEL_VISIT * INPUT_COPIES + KERNEL_BYTES_PER_PIXEL_VISIT
    return int(math.ceil(n_visits * sy * sx * per_pv + sy * sx * OUTPUT_BYTES_PER_PIXEL))


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


def plan_stack(n_visits: int, shape: tuple[int, int], *, budget_bytes: int,
               storage_chunk: int | None = None,
               subregion: tuple[int, int] | int | None = None) -> StackPlan:
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
                f"{need / 2**20:.0f} MiB; raise coaddx.memory-per-task")
        chunk = storage_chunk or side
        sy = _aligned(side, chunk, ny)
        sx = _aligned(side, chunk, nx)
    planned = task_bytes(n_visits, sy, sx)
    n_tasks = math.ceil(ny / sy) * math.ceil(nx / sx)
    return StackPlan(subregion=(sy, sx), task_bytes=planned, budget_bytes=int(budget_bytes),
                     n_tasks=n_tasks)
