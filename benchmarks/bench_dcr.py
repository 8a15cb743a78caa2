"""Benchmark DcrAssembleCoadd: seconds per model update and in all, throughput, peak memory.

    python benchmarks/bench_dcr.py [--visits 16] [--size 2048] [--tile 512] [--out bench-out]

Input (made once under ``--out`` and reused): ``coaddx.simulate(..., dcr=True)`` in g band
(effective wavelength 476.31 nm, bandwidth 147 nm; airmass 1.0-2.0, no artifacts). The
template is the MEANCLIP coadd of the same warps (``coaddx.assemble``, persisted and timed on
its own: what ``coaddx assemble --method dcr`` builds when no ``--template`` is given).

The solve runs on the default threaded scheduler, so this process is the one worker; its
peak resident memory (``coaddx.runtime.diagnostics.PeakMemory``) is printed beside the
planner's figure for it: what the solve holds between passes (``coaddx.plan.dcr_held_bytes``)
plus one update task per thread (``coaddx.plan.dcr_task_bytes``) on top of the resident memory
before the solve. Throughput is pixel-visits of the direct cube (visits x rows x columns) per
second of one model update. There is no peer implementation to run beside it (LSST's
DcrAssembleCoadd needs the Science Pipelines); the plain MEANCLIP coadd of the same cube is
timed as context, not as a ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import coaddx
from coaddx.runtime.diagnostics import PeakMemory, format_bytes
from coaddx.runtime.malloc import tune_malloc

G_BAND = {"effective_wavelength": 476.31, "bandwidth": 147.0}


def _store(out: Path, visits: int, size: int) -> Path:
    path = out / f"dcr-{visits}x{size}"
    store = path / "warps.zarr"
    if not (store / "direct" / "zarr.json").exists():
        print(f"simulating {visits} DCR visits of {size} x {size} into {path} (once) ...")
        t0 = time.perf_counter()
        coaddx.simulate(
            path,
            n_visits=visits,
            shape=(size, size),
            seed=7,
            calexps=False,
            artifacts=False,
            dcr=True,
            overwrite=True,
            **G_BAND,
        )
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    print(f"glibc malloc tuned: {tune_malloc()}")
    args.out.mkdir(parents=True, exist_ok=True)
    store = _store(args.out, args.visits, args.size)
    work = args.visits * args.size * args.size / 1e6
    threads = os.cpu_count() or 1
    print(
        f"\nDcrAssembleCoadd, {args.visits} visits x {args.size} x {args.size} "
        f"({work:.0f} Mpix-visits), 3 sub-filters, tiles {args.tile}, threaded scheduler, "
        f"{threads} cores"
    )
    direct = coaddx.open_warps(store)
    t0 = time.perf_counter()
    template = coaddx.assemble(direct).persist()
    t_template = time.perf_counter() - t0
    print(
        f"template (MEANCLIP coadd, context): {t_template:.1f} s, "
        f"{work / t_template:.1f} Mpix-visits/s"
    )

    stamps = []
    gc.collect()
    config = coaddx.DcrConfig(**G_BAND, subregion_size=(args.tile, args.tile))
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        stamps.append(t0)

        def progress(iteration: int, metric: float, gain: float) -> None:
            stamps.append(time.perf_counter())
            dt = stamps[-1] - stamps[-2]
            if iteration == 0:
                print(f"  first pass: initial metric {metric:.5f}, {dt:6.1f} s", flush=True)
                return
            print(
                f"  update {iteration:2d}: metric {metric:.5f}, gain {gain:.3f}, {dt:6.1f} s, "
                f"{work / dt:6.1f} Mpix-visits/s",
                flush=True,
            )

        dcr = coaddx.assemble_dcr(direct, template, config, progress=progress)
        images = dcr["image"].data.persist()
        total = time.perf_counter() - t0
    updates = stamps[2:]
    per = [b - a for a, b in zip(stamps[1:-1], updates, strict=True)]
    setup = stamps[1] - stamps[0] if len(stamps) > 1 else float("nan")
    plan = dcr.attrs["plan"]
    planned = mem.baseline + plan["held_bytes"] + threads * plan["task_bytes"]
    print(
        f"\n{dcr.attrs['n_iterations']} updates ({dcr.attrs['stop']}): first pass (inputs, "
        f"DCR weights, model weights, initial metric) {setup:.1f} s; per update "
        f"{sum(per) / max(len(per), 1):.1f} s (min {min(per, default=0):.1f}, max "
        f"{max(per, default=0):.1f}), {work / (sum(per) / max(len(per), 1)):.1f} Mpix-visits/s; "
        f"in all {total:.1f} s"
    )
    print(
        f"peak memory of the worker (this process): {format_bytes(mem.peak)} "
        f"(+{format_bytes(mem.added)} during the solve); planned "
        f"{format_bytes(planned)} = {format_bytes(mem.baseline)} before + held "
        f"{format_bytes(plan['held_bytes'])} + {threads} x task "
        f"{format_bytes(plan['task_bytes'])} ({plan['n_tiles']} tiles of {plan['tile']}, "
        f"buffer {plan['buffer']} px, halo {plan['halo']} px)"
    )
    del images
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
