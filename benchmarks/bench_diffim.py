"""Benchmark coaddx image differencing (ImagePsfMatch, Alard-Lupton) beside HOTPANTS, same pair.

    python benchmarks/bench_diffim.py [--size 4096] [--stars 6000] [--workers 2] [--repeat 1]
        [--hotpants PATH | --build-hotpants DIR] [--convolution interpolated|exact]

Input (built in memory, outside every timing): one star field (``--stars`` stars, 10 % of them
bright, log-uniform fluxes, uniform positions with sub-pixel offsets spread bilinearly), seen
through a Gaussian PSF of FWHM 3.8 px (template) and one of FWHM 5.6 px (science), each on sky
noise (sigma 10) plus Poisson noise (gain 2), with the matching variance plane, on one TAN grid
(so nothing is warped). ``--science-psf moffat`` makes the science PSF a Moffat (beta 3).

coaddx: ``coaddx.subtract`` with LSST's ImagePsfMatch defaults (AL basis from the two FWHMs:
3 Gaussians of degrees 4, 2, 2, a 21 px kernel here; spatial_kernel_order 2) plus a fitted
background of spatial_bg_order 1, ``size_cell = size // 10`` and ``n_star_per_cell = 3``
(at most 300 kernel candidates).

HOTPANTS (C, single-threaded), the same pair in the same run: its README's typical call adapted
to these FWHMs and to the same model: the same three Gaussians (sigmas and degrees of the coaddx
basis), kernel half width ``size // 2`` of the coaddx kernel, ``-ko 2 -bgo 1``, 10 x 10 stamps
of 3 substamps (``-nss 3``, half width 1.5 x the kernel's), the template convolved (``-c t``)
and the difference normalised to the science image (``-n i``, as coaddx's), the variance planes
given as noise images (``-tni/-ini``, sigma). The binary: ``--hotpants PATH``, else the
environment variable ``HOTPANTS``, else ``hotpants`` on PATH; ``--build-hotpants DIR`` builds it
first with ``../shared/tools/hotpants/build.sh DIR`` (gcc and libcfitsio-dev). Without a binary
the peer is skipped, with a message. The FITS files are written to a temporary directory before
the timing; the timing is the wall time of the process (best of ``--repeat``; each HOTPANTS run
follows one coaddx run, so that load from elsewhere hits both alike), the difference is read
back after it.

Both differences are measured with one statistic, the robust standard deviation
1.4826 x MAD (in counts), on the pixels valid in both: "sky" = pixels where the noise-free
science and template carry less than 0.5 sky sigma of star light (pure noise: the
difference-noise criterion), "all" = every valid pixel (includes the residuals of the stars:
kernel quality), and D/sigma with sigma from coaddx's difference variance (the expected noise
of a perfect match) for both.

Stages of coaddx are timed by wrapping the functions ``coaddx.diffim`` calls (wall time):
detect (``select_candidate_positions``), kernel (``fit_psf_matching_kernel``), convolve
(``convolve_regions``) and rest (what ``subtract`` does besides). Workers: the dask threaded
scheduler with ``num_workers = n``; BLAS/OpenMP are pinned to one thread (environment, before
numpy loads) so that ``n`` workers use ``n`` cores.

Context, not used for any ratio: published CPU wall times for one 4096 x 4096 pair are
HOTPANTS about 43 s and ZOGY about 37 s (the SFFT paper's comparison, Hu et al. 2022).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import importlib
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

import dask
import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from scipy.signal import oaconvolve

from coaddx.diffim.config import PsfMatchConfig
from coaddx.diffim.subtract import Subtraction
from coaddx.kernels.psfmatch.basis import alard_lupton_sigmas
from coaddx.model.exposure import Exposure
from coaddx.model.masks import mask_planes
from coaddx.model.skymap import make_tan_wcs
from coaddx.runtime.diagnostics import PeakMemory, format_bytes
from coaddx.sim.simulate import psf_image

# the module (coaddx.diffim re-exports the function under the same name)
cdiffim = importlib.import_module("coaddx.diffim.subtract")

FWHM_TEMPLATE, FWHM_SCIENCE = 3.8, 5.6  # px
SKY_SIGMA, GAIN = 10.0, 2.0  # counts, e-/count
HOTPANTS_FILL = np.float32(1e-30)  # HOTPANTS's value on pixels it could not difference
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "shared/tools/hotpants/build.sh"
STAGES = {
    "detect": "select_candidate_positions",
    "kernel": "fit_psf_matching_kernel",
    "convolve": "convolve_regions",
}


def _star_field(rng: np.random.Generator, size: int, n_stars: int) -> np.ndarray:
    """Point sources (flux in counts) spread bilinearly over the 4 nearest pixels."""
    x, y = rng.uniform(20, size - 21, n_stars), rng.uniform(20, size - 21, n_stars)
    bright = rng.random(n_stars) < 0.1
    flux = np.where(
        bright, 10 ** rng.uniform(4.5, 5.5, n_stars), 10 ** rng.uniform(2.5, 4.5, n_stars)
    )
    field = np.zeros((size, size))
    ix, iy = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - ix, y - iy
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(field, (iy + dy, ix + dx), flux * w)
    return field


def _observe(
    rng: np.random.Generator, field: np.ndarray, psf: np.ndarray, wcs: Any, fwhm: float
) -> tuple[Exposure, np.ndarray]:
    model = oaconvolve(field, psf, mode="same")
    variance = SKY_SIGMA**2 + np.maximum(model, 0.0) / GAIN
    image = model + rng.normal(0.0, 1.0, model.shape) * np.sqrt(variance)
    exposure = Exposure(
        image.astype(np.float32),
        np.zeros(model.shape, np.int32),
        variance.astype(np.float32),
        wcs,
        mask_planes(),
        psf=psf,
        psf_fwhm=fwhm,
    )
    return exposure, model


def make_pair(
    size: int,
    n_stars: int,
    seed: int = 1,
    science_psf: Literal["gaussian", "moffat"] = "gaussian",
) -> tuple[Exposure, Exposure, np.ndarray]:
    """(template, science, sky): one star field under two seeings, independent noise; ``sky``
    marks the pixels where both noise-free images hold < 0.5 sky sigma of star light."""
    rng = np.random.default_rng(seed)
    field = _star_field(rng, size, n_stars)
    wcs = make_tan_wcs(SkyCoord(150.0 * u.deg, 2.0 * u.deg), ((size - 1) / 2, (size - 1) / 2), 0.2)
    psf_t = psf_image(FWHM_TEMPLATE, "gaussian")
    psf_s = psf_image(FWHM_SCIENCE, science_psf)
    template, model_t = _observe(rng, field, psf_t, wcs, FWHM_TEMPLATE)
    science, model_s = _observe(rng, field, psf_s, wcs, FWHM_SCIENCE)
    sky = (np.abs(model_t) < 0.5 * SKY_SIGMA) & (np.abs(model_s) < 0.5 * SKY_SIGMA)
    return template, science, sky


class _StageTimer:
    """Wraps the functions coaddx.diffim calls and sums their wall and process CPU time (all
    threads) per stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._orig: dict[str, Callable[..., Any]] = {}

    def _wrap(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c0

        return timed

    def __enter__(self) -> Self:
        for stage, name in STAGES.items():
            self._orig[name] = getattr(cdiffim, name)
            setattr(cdiffim, name, self._wrap(stage, self._orig[name]))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, func in self._orig.items():
            setattr(cdiffim, name, func)


def run_once(
    template: Exposure, science: Exposure, config: PsfMatchConfig, workers: int
) -> tuple[dict[str, float], dict[str, float], Subtraction, int]:
    """One timed ``subtract``: (wall s, CPU s per stage, result, peak memory added)."""
    with (
        dask.config.set(scheduler="threads", num_workers=workers),
        PeakMemory() as mem,
        _StageTimer() as timer,
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        result = cdiffim.subtract(template, science, config)
        total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    times, cpu = dict(timer.times), dict(timer.cpu)
    times["rest"], cpu["rest"] = total - sum(times.values()), cpu_total - sum(cpu.values())
    times["total"], cpu["total"] = total, cpu_total
    return times, cpu, result, mem.added


# -- HOTPANTS ---------------------------------------------------------------------------------


def find_hotpants(path: str | None, build_dir: str | None) -> tuple[str | None, str]:
    """(binary or None, how it was found or why it is absent)."""
    if build_dir is not None:
        if not BUILD_SCRIPT.exists():
            return None, f"--build-hotpants: {BUILD_SCRIPT} not found"
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), build_dir], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return None, f"building HOTPANTS failed: {done.stderr.strip()[-400:]}"
        path = done.stdout.strip().splitlines()[-1]
    for given, how in (
        (path, "--hotpants"),
        (os.environ.get("HOTPANTS"), "$HOTPANTS"),
        (shutil.which("hotpants"), "PATH"),
    ):
        if given:
            if os.access(given, os.X_OK) and Path(given).is_file():
                return given, f"{given} (from {how})"
            return None, f"{how} = {given!r} is not an executable file"
    return None, (
        "no binary (give --hotpants PATH, set HOTPANTS, or --build-hotpants DIR to build it "
        f"with {BUILD_SCRIPT})"
    )


def hotpants_args(config: PsfMatchConfig, size: int) -> list[str]:
    """The README's typical call, adapted to the FWHMs and the coaddx model (module docstring)."""
    sigmas, ksize = alard_lupton_sigmas(
        FWHM_TEMPLATE,
        FWHM_SCIENCE,
        n_gauss=config.al_n_gauss,
        sigmas=config.al_sigmas,
        beta=config.al_beta,
        min_sig=config.al_min_sig,
        min_sig_deconv=config.al_min_sig_deconv,
        kernel_size=config.kernel_size,
        size_min=config.kernel_size_min,
        size_max=config.kernel_size_max,
        scale_by_fwhm=config.scale_by_fwhm,
    )
    gauss = [
        v for d, s in zip(config.al_degrees, sigmas, strict=True) for v in (str(d), f"{s:.4f}")
    ]
    half = ksize // 2
    n_stamps = str(max(size // config.size_cell, 1))
    return [
        *("-tu 1e7 -iu 1e7 -tl -1e3 -il -1e3".split()),
        *("-ng", str(len(sigmas)), *gauss),
        *("-r", str(half), "-rss", str(int(1.5 * half))),
        *("-ko", str(config.spatial_kernel_order), "-bgo", str(config.spatial_bg_order)),
        *("-nsx", n_stamps, "-nsy", n_stamps, "-nss", "3"),
        *("-c", "t", "-n", "i", "-v", "0"),
    ]


def run_hotpants(
    binary: str, template: Exposure, science: Exposure, args: list[str], repeat: int
) -> tuple[float, float, np.ndarray, fits.Header]:
    """(best wall s, its CPU s, difference, its header): files written before the timing."""
    with tempfile.TemporaryDirectory(prefix="bench_diffim_") as tmp:
        d = Path(tmp)
        for name, data in (
            ("tmpl", template.image),
            ("sci", science.image),
            ("tmpl_sig", np.sqrt(template.variance)),
            ("sci_sig", np.sqrt(science.variance)),
        ):
            fits.PrimaryHDU(np.asarray(data, np.float32)).writeto(d / f"{name}.fits")
        cmd = [
            binary,
            *("-inim", str(d / "sci.fits"), "-tmplim", str(d / "tmpl.fits")),
            *("-tni", str(d / "tmpl_sig.fits"), "-ini", str(d / "sci_sig.fits")),
            *("-outim", str(d / "diff.fits")),
            *args,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeat):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            wall = time.perf_counter() - t0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise RuntimeError(f"HOTPANTS failed ({done.returncode}): {done.stderr[-800:]}")
            cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
            if wall < best:
                best, best_cpu = wall, cpu
        with fits.open(d / "diff.fits") as hdul:
            diff = np.asarray(hdul[0].data, np.float32)
            header = hdul[0].header.copy()
    return best, best_cpu, diff, header


# -- noise and quality ------------------------------------------------------------------------


def robust_std(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation from the median."""
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def noise_table(
    diffs: dict[str, np.ndarray], sigma: np.ndarray, valid: np.ndarray, sky: np.ndarray
) -> dict[str, dict[str, float]]:
    """Robust std of each difference on the common valid pixels: sky, all, D/sigma sky/all."""
    out = {}
    for name, d in diffs.items():
        out[name] = {
            "sky": robust_std(d[valid & sky]),
            "all": robust_std(d[valid]),
            "z_sky": robust_std((d / sigma)[valid & sky]),
            "z_all": robust_std((d / sigma)[valid]),
        }
    return out


def _quality(result: Subtraction, size: int) -> str:
    status = np.array(result.info.status)
    return (
        f"{len(result.candidates)} candidates, {int((status == 'good').sum())} used; kernel "
        f"{result.kernel.size} px, sum {result.kernel.kernel_sum(size / 2, size / 2):.4f} at "
        "the centre"
    )


def _hotpants_quality(header: fits.Header) -> str:
    keys = ("KSUM00", "SSSIG00", "SSSCAT00", "X2NRM00", "NSCALO00")
    found = {k: header[k] for k in keys if k in header}
    return ", ".join(f"{k} {v}" for k, v in found.items()) or "(no kernel keywords in the header)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=6000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; best kept")
    parser.add_argument("--science-psf", choices=("gaussian", "moffat"), default="gaussian")
    parser.add_argument("--convolution", choices=("interpolated", "exact"), default=None)
    parser.add_argument("--hotpants", default=None, help="HOTPANTS binary (else $HOTPANTS)")
    parser.add_argument("--build-hotpants", metavar="DIR", default=None)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    template, science, sky = make_pair(args.size, args.stars, science_psf=args.science_psf)
    print(
        f"input: {args.size} x {args.size} pair, {args.stars} stars, FWHM {FWHM_TEMPLATE} "
        f"(gaussian) -> {FWHM_SCIENCE} px ({args.science_psf}), built in "
        f"{time.perf_counter() - t0:.1f} s (not timed); {os.cpu_count()} CPUs visible"
    )
    config = PsfMatchConfig(
        size_cell=max(args.size // 10, 32),
        n_star_per_cell=3,
        fit_for_background=True,
        spatial_kernel_order=2,
        spatial_bg_order=1,
    )
    if args.convolution is not None:
        config = config.replace(convolution=args.convolution)
    mpix = args.size * args.size / 1e6
    load_before = os.getloadavg()[0]
    binary, how = find_hotpants(args.hotpants, args.build_hotpants)
    hp_args = hotpants_args(config, args.size)
    rows: dict[int, Any] = {}
    hp_best: tuple[float, float, np.ndarray, fits.Header] | None = None
    # interleaved (coaddx, then HOTPANTS, per repeat), so that load from elsewhere hits both alike
    for _ in range(args.repeat):
        for n in args.workers:
            run = run_once(template, science, config, n)
            if n not in rows or run[0]["total"] < rows[n][0]["total"]:
                rows[n] = run
        if binary is not None:
            hp = run_hotpants(binary, template, science, hp_args, 1)
            if hp_best is None or hp[0] < hp_best[0]:
                hp_best = hp
    for n, (_, _, result, added) in rows.items():
        print(
            f"coaddx, {n} worker(s): {_quality(result, args.size)}; convolution "
            f"{getattr(config, 'convolution', 'exact')}; peak memory added {format_bytes(added)}"
        )
    print(
        f"\nbest of {args.repeat}; wall seconds, Mpix/s from wall, process CPU seconds "
        f"(CPU s / wall s > 1: work ran in parallel). 1-min load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    )
    print(f"{'stage':<10}" + "".join(f"{f'{n} worker(s)':>30}" for n in rows))
    print(f"{'':<10}" + "".join(f"{'wall s':>10}{'Mpix/s':>10}{'CPU s':>10}" for _ in rows))
    for stage in (*STAGES, "rest", "total"):
        cells = "".join(
            f"{r[0][stage]:>10.2f}{mpix / r[0][stage]:>10.2f}{r[1][stage]:>10.2f}"
            for r in rows.values()
        )
        print(f"{stage:<10}{cells}")

    print(f"\nHOTPANTS: {how}")
    if binary is None or hp_best is None:
        print("HOTPANTS absent: the peer is skipped (no ratio, no noise comparison)")
        return
    print(f"HOTPANTS options: {' '.join(hp_args)}")
    hp_wall, hp_cpu, hp_diff, header = hp_best
    waited = " (CPU well below wall: it waited for a core)" if hp_cpu < 0.8 * hp_wall else ""
    print(
        f"HOTPANTS (1 thread), best of {args.repeat}, each run right after coaddx's: "
        f"{hp_wall:.2f} s wall, {hp_cpu:.2f} s CPU{waited}"
    )
    print(f"HOTPANTS kernel: {_hotpants_quality(header)}")
    result = rows[args.workers[-1]][2]
    ours = np.asarray(result.difference.image, np.float64)
    theirs = hp_diff.astype(np.float64)
    sigma = np.sqrt(np.asarray(result.difference.variance, np.float64))
    half = result.kernel.size // 2
    valid = (
        np.isfinite(ours) & np.isfinite(sigma) & np.isfinite(theirs) & (hp_diff != HOTPANTS_FILL)
    )
    valid[: 2 * half], valid[-2 * half :], valid[:, : 2 * half], valid[:, -2 * half :] = (
        False,
    ) * 4
    table = noise_table({"coaddx": ours, "HOTPANTS": theirs}, sigma, valid, sky)
    print(
        f"\ndifference noise, robust std (1.4826 MAD) on the {valid.mean() * 100:.1f} % of "
        f"pixels valid in both ({(valid & sky).mean() * 100:.1f} % sky):"
    )
    print(f"{'':<10}{'sky, counts':>14}{'all, counts':>14}{'D/sigma sky':>14}{'D/sigma all':>14}")
    for name, row in table.items():
        print(
            f"{name:<10}{row['sky']:>14.3f}{row['all']:>14.3f}{row['z_sky']:>14.4f}"
            f"{row['z_all']:>14.4f}"
        )
    noise_ratio = table["coaddx"]["sky"] / table["HOTPANTS"]["sky"]
    print(f"noise coaddx / HOTPANTS (sky): {noise_ratio:.4f} (target within 5 %)")
    print("\nspeed: HOTPANTS wall / coaddx wall (same pair, same run):")
    for n, r in rows.items():
        ratio = hp_wall / r[0]["total"]
        print(f"  {n} worker(s): {r[0]['total']:.2f} s vs {hp_wall:.2f} s -> {ratio:.2f}x")
    print("CPU seconds (context: all of coaddx's threads against HOTPANTS' one):")
    for n, r in rows.items():
        cpu_ratio = hp_cpu / r[1]["total"]
        print(f"  {n} worker(s): {r[1]['total']:.2f} s vs {hp_cpu:.2f} s -> {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
