"""Throughput of coaddx.kernels.stack.stack_block, in Mpix-visits/s (pixels x visits / second).

Run ``python benchmarks/bench_kernels.py`` for a table per statistic and number of visits against
``bottleneck.nanmedian`` (one core), ``astropy.stats.sigma_clip`` + mean (the MEANCLIP peer, 3
sigma, 2 iterations, median centre) and a numpy masked weighted mean; ``--threads 2`` adds the
aggregate rate of two blocks stacked at once in two threads (the kernel releases the GIL), and
the ratios of those rates to the peers. ``--statistics`` limits the table to some statistics. The
``StackBlock`` class holds the same cases as asv ``time_*`` benchmarks.
"""

from __future__ import annotations

import argparse
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coaddx.kernels.stack.block import stack_block

BAD, SAT, EDGE, NO_DATA = 1 << 0, 1 << 1, 1 << 4, 1 << 8
CLIPPED, SENSOR_EDGE, REJECTED = 1 << 9, 1 << 10, 1 << 12
BAD_MASK = NO_DATA | BAD | SAT | EDGE
RULES = dict(
    bad_mask=BAD_MASK,
    propagate_bits=(SAT,),
    propagate_thresholds=(0.1,),
    clipped_bit=CLIPPED,
    map_from=(BAD | SAT, EDGE, CLIPPED),
    map_to=(REJECTED, SENSOR_EDGE, CLIPPED),
    no_data_bit=NO_DATA,
)
STATISTICS = ("mean", "median", "meanclip")


def make_block(nvisit, shape=(512, 512), seed=0, dense=False):
    """A warp-like block of float32 sky (σ = 5) with 1 % cosmic-ray outliers.

    Masks (per visit): 3 saturated stars (SAT discs of radius 4-12 px), 2 bad columns (BAD), a
    20-row chip gap (NO_DATA and NaN) with a 4-row EDGE border and 0.1 % unflagged NaNs. With
    ``dense`` the bits are scattered uniformly instead (5 % SAT, 3 % BAD, 2 % EDGE, 1 % NaN): every
    row then holds every bit, the worst case for the mask bookkeeping.
    """
    rng = np.random.default_rng(seed)
    size = (nvisit, *shape)
    image = rng.normal(100.0, 5.0, size).astype(np.float32)
    image[rng.random(size) < 0.01] += 500.0
    variance = rng.uniform(20.0, 30.0, size).astype(np.float32)
    mask = np.zeros(size, np.int32)
    if dense:
        image[rng.random(size) < 0.01] = np.nan
        for bit, frac in ((SAT, 0.05), (BAD, 0.03), (EDGE, 0.02)):
            mask[rng.random(size) < frac] |= bit
    else:
        image[rng.random(size) < 0.001] = np.nan
        yy, xx = np.indices(shape)
        for v in range(nvisit):
            for _ in range(3):
                cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
                mask[v][(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(4, 13) ** 2] |= SAT
            mask[v][:, rng.integers(0, shape[1], 2)] |= BAD
            gap = rng.integers(0, max(1, shape[0] - 28))
            mask[v, gap : gap + 28] |= EDGE
            mask[v, gap + 4 : gap + 24] |= NO_DATA
            image[v, gap + 4 : gap + 24] = np.nan
    weights = 1.0 / rng.uniform(20.0, 30.0, nvisit)
    return image, variance, mask, weights


def numpy_masked_mean(image, variance, mask, weights):
    """The plain-numpy weighted mean over good inputs (value and input-variance error)."""
    good = np.isfinite(image) & (mask & BAD_MASK == 0)
    w = np.where(good, weights[:, None, None], 0.0)
    sw = w.sum(axis=0)
    value = (w * np.where(good, image, 0.0)).sum(axis=0) / sw
    error = (w * w * np.where(good, variance, 0.0)).sum(axis=0) / (sw * sw)
    return value, error


def bottleneck_median(image, variance, mask, weights):
    import bottleneck

    return bottleneck.nanmedian(image, axis=0)


def astropy_clipped_mean(image, variance, mask, weights):
    """astropy sigma_clip (3 sigma, 2 iterations, median centre) + mean of the good inputs."""
    from astropy.stats import sigma_clip

    x = np.ma.masked_array(image, mask=((mask & BAD_MASK) != 0) | ~np.isfinite(image))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(x, sigma=3.0, maxiters=2, axis=0, cenfunc="median", stdfunc="std")
    return clipped.mean(axis=0)


def masked_copy(image, mask):
    """NaN where the input is masked (what bottleneck.nanmedian needs; not timed)."""
    return np.where(mask & BAD_MASK == 0, image, np.float32(np.nan))


def best_seconds(func, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def rate(block, func, repeat, threads=1):
    """Mpix-visits/s of ``func(*block)``; with threads > 1, aggregate of that many at once."""
    work = block[0].size
    if threads == 1:
        return work / best_seconds(lambda: func(*block), repeat) / 1e6
    blocks = [block] + [tuple(a.copy() for a in block) for _ in range(threads - 1)]
    with ThreadPoolExecutor(threads) as pool:
        run = lambda: list(pool.map(lambda b: func(*b), blocks))  # noqa: E731
        run()
        return threads * work / best_seconds(run, repeat) / 1e6


def warm_up(statistics=STATISTICS):
    """Compile (or load from the numba cache) every specialisation used below."""
    block = make_block(3, (4, 4))
    for statistic in statistics:
        stack_block(*block, statistic=statistic, **RULES)


def table(visits, shape, repeat, threads, with_reference=True, dense=False, stats=STATISTICS):
    warm_up(stats)
    header = ["V", *stats]
    refs = []
    if with_reference:
        refs = [("np masked mean", numpy_masked_mean, "mean")]
        refs += [("bn.nanmedian", bottleneck_median, "median")]
        refs += [("astropy clip", astropy_clipped_mean, "meanclip")]
        refs = [r for r in refs if r[2] in stats]
        header += [name for name, _, _ in refs]
    if threads > 1:
        header += [f"{s} x{threads}" for s in stats]
    ratios = [f"{s} x{threads} / {name}" for name, _, s in refs]
    header += [f"{s} / {name}" for name, _, s in refs] if threads == 1 else ratios
    masks = "dense random masks" if dense else "sparse warp-like masks"
    print(f"block (V, {shape[0]}, {shape[1]}) float32, {masks}, Mpix-visits/s, best of {repeat}")
    print(" | ".join(f"{h:>14s}" for h in header))
    for nvisit in visits:
        block = make_block(nvisit, shape, dense=dense)
        own = {s: rate(block, _stacker(s), repeat) for s in stats}
        row = list(own.values())
        peer = {}
        for _, func, stat in refs:
            inputs = (masked_copy(block[0], block[2]), *block[1:]) if stat == "median" else block
            peer[stat] = rate(inputs, func, repeat)
            row.append(peer[stat])
        if threads > 1:
            own = {s: rate(block, _stacker(s), repeat, threads) for s in stats}
            row += list(own.values())
        cells = [f"{r:14.0f}" for r in row] + [f"{own[s] / peer[s]:14.2f}" for _, _, s in refs]
        print(" | ".join([f"{nvisit:>14d}", *cells]), flush=True)


def _stacker(statistic):
    return lambda *block: stack_block(*block, statistic=statistic, **RULES)


class StackBlock:
    """asv benchmarks: one (V, 512, 512) block per statistic and number of visits."""

    params = (list(STATISTICS), [16, 64, 200])
    param_names = ("statistic", "nvisit")

    def setup(self, statistic, nvisit):
        warm_up()
        self.block = make_block(nvisit)

    def time_stack_block(self, statistic, nvisit):
        stack_block(*self.block, statistic=statistic, **RULES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, nargs="+", default=[16, 64, 200])
    parser.add_argument("--shape", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--dense", action="store_true", help="uniformly scattered mask bits")
    parser.add_argument("--statistics", nargs="+", choices=STATISTICS, default=list(STATISTICS))
    args = parser.parse_args(argv)
    table(
        args.visits,
        tuple(args.shape),
        args.repeat,
        args.threads,
        not args.no_reference,
        args.dense,
        tuple(args.statistics),
    )


if __name__ == "__main__":
    main()
