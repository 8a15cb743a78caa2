"""Throughput of coaddx.kernels.warp.warp_block (the kernel only), in input Mpix/s.

    python benchmarks/bench_warp_kernel.py [--kernels lanczos3 bilinear] [--threads 2]

A 2048 x 4096 (columns x rows) float32 source with image, variance and mask planes (EDGE border,
scattered BAD pixels) is warped onto a 2048 x 2048 destination whose TAN WCS is rotated 30 deg
about the source centre at the same pixel scale. "input Mpix/s" is source pixels per second
(8.4 Mpix per call), "output Mpix/s" destination pixels per second; the mapping
(``geometry.source_coordinates``, interp_length 10) is computed beforehand and timed on its own.
``--threads N`` adds the aggregate rate of N warps running at once in N threads (the kernel
releases the GIL). For reference, ``scipy.ndimage.map_coordinates`` (cubic spline, image plane
only, one thread) is timed on the same mapping. The ``WarpBlock`` class holds the same cases as
asv ``time_*`` benchmarks.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
from astropy.coordinates import SkyCoord

from coaddx.kernels.warp import KERNELS, warp_block
from coaddx.model.geometry import source_coordinates
from coaddx.model.skymap import make_tan_wcs

BAD, EDGE, NO_DATA = 1 << 0, 1 << 4, 1 << 8
SOURCE_SHAPE = (4096, 2048)
DEST_SHAPE = (2048, 2048)


def make_case(source_shape=SOURCE_SHAPE, dest_shape=DEST_SHAPE, rotation=30.0, seed=0):
    """(image, variance, mask, src_x, src_y, area) and the best time of the mapping."""
    rng = np.random.default_rng(seed)
    sy, sx = source_shape
    image = rng.normal(100.0, 5.0, source_shape).astype(np.float32)
    variance = rng.uniform(20.0, 30.0, source_shape).astype(np.float32)
    mask = np.zeros(source_shape, np.int32)
    mask[rng.random(source_shape) < 1e-3] |= BAD
    for edge in (np.s_[:4, :], np.s_[-4:, :], np.s_[:, :4], np.s_[:, -4:]):
        mask[edge] |= EDGE
    centre = SkyCoord(150.0, 2.0, unit="deg")
    src_wcs = make_tan_wcs(centre, ((sx - 1) / 2, (sy - 1) / 2), 0.2)
    dest_wcs = make_tan_wcs(
        centre, ((dest_shape[1] - 1) / 2, (dest_shape[0] - 1) / 2), 0.2, rotation
    )

    def mapping():
        return source_coordinates(dest_wcs, src_wcs, dest_shape)

    src_x, src_y, area = mapping()
    return (image, variance, mask, src_x, src_y, area), best_seconds(mapping, 3)


def best_seconds(func, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def seconds(case, kernel, repeat, threads=1):
    """Best wall time of one warp, or of ``threads`` warps run at once."""

    def run_one():
        return warp_block(*case, kernel=kernel, grow_full_bits=EDGE, no_data_bit=NO_DATA)

    run_one()  # compile or load from the numba cache
    if threads == 1:
        return best_seconds(run_one, repeat)
    with ThreadPoolExecutor(threads) as pool:
        return best_seconds(lambda: list(pool.map(lambda _: run_one(), range(threads))), repeat)


def spline_seconds(case, repeat):
    from scipy.ndimage import map_coordinates

    image, _, _, src_x, src_y, _ = case
    coords = np.stack([src_y, src_x])
    return best_seconds(lambda: map_coordinates(image, coords, order=3, cval=np.nan), repeat)


def table(kernels, repeat, threads, with_reference=True):
    case, mapping = make_case()
    n_in, n_out = case[0].size / 1e6, case[3].size / 1e6
    valid = np.isfinite(warp_block(*case)[0]).mean()
    print(
        f"source {SOURCE_SHAPE[1]} x {SOURCE_SHAPE[0]} -> destination {DEST_SHAPE[1]} x "
        f"{DEST_SHAPE[0]} (30 deg rotation, {valid:.0%} of it inside the source); "
        f"mapping {mapping:.2f} s ({n_out / mapping:.0f} Mpix/s); best of {repeat}"
    )
    print(f"{'kernel':>22s} | {'seconds':>8s} | {'input Mpix/s':>12s} | {'output Mpix/s':>13s}")
    rows = [(kernel, seconds(case, kernel, repeat), 1) for kernel in kernels]
    if threads > 1:
        rows += [
            (f"{k} x{threads} threads", seconds(case, k, repeat, threads), threads) for k in kernels
        ]
    if with_reference:
        rows.append(("scipy spline (image)", spline_seconds(case, repeat), 1))
    for name, sec, count in rows:
        rates = f"{count * n_in / sec:12.1f} | {count * n_out / sec:13.1f}"
        print(f"{name:>22s} | {sec:8.3f} | {rates}", flush=True)


class WarpBlock:
    """asv benchmarks: one 2048 x 4096 -> 2048 x 2048 rotated warp per kernel."""

    params: ClassVar[list[str]] = list(KERNELS)
    param_names: ClassVar[list[str]] = ["kernel"]

    def setup(self, kernel):
        self.case = make_case()[0]
        warp_block(*self.case, kernel=kernel)

    def time_warp_block(self, kernel):
        warp_block(*self.case, kernel=kernel, grow_full_bits=EDGE, no_data_bit=NO_DATA)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    table(args.kernels, args.repeat, args.threads, not args.no_reference)


if __name__ == "__main__":
    main()
