"""What the commands print: the one-screen summary, the text progress bar and the memory rows."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from coaddx.plan import KERNEL_LOAD_BYTES
from coaddx.runtime.cluster import WorkerMemory, worker_resources
from coaddx.runtime.diagnostics import format_bytes

__all__ = ["memory_rows", "progress_bar", "summary"]


def summary(rows: Sequence[tuple[str, str]]) -> str:
    """``label  value`` lines, the labels padded to one width."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def progress_bar(label: str, unit: str, width: int = 40) -> Callable[[int, int], None]:
    """A text progress bar callback ``(done, total)`` on stderr."""

    def show(done: int, total: int) -> None:
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(
            f"\r{label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total} {unit}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return show


def memory_rows(
    workers: WorkerMemory, client: Any, planned: Callable[[int, int, int], int]
) -> list[tuple[str, str]]:
    """Summary rows: the measured peak RSS of each worker beside its plan, and spills.

    ``planned(threads, n_workers, baseline)`` is the planned peak bytes of one worker.
    """
    threads = worker_resources(client)
    rows = []
    for i, (addr, peak) in enumerate(sorted(workers.peaks.items())):
        plan = planned(threads.get(addr, (1, 0))[0], len(workers.peaks), peak.baseline)
        label = f"peak memory, worker {i}" if len(workers.peaks) > 1 else "peak memory"
        rows.append(
            (
                label,
                (
                    f"{format_bytes(peak.peak)} (+{format_bytes(peak.added)} during "
                    f"the run); planned {format_bytes(plan + KERNEL_LOAD_BYTES)} "
                    f"per worker, incl. {format_bytes(KERNEL_LOAD_BYTES)} for loading "
                    "compiled kernels"
                ),
            )
        )
    rows.append(("spilled to disk", f"{workers.spilled} keys"))
    return rows
