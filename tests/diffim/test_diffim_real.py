"""ImagePsfMatch on real DECam data: sfft's ``difference_noise_decorrelation`` test set.

Two epochs (OBS04, 2018; OBS18, 2016) of five 256 x 256 sky-subtracted i-band cutouts on one
pixel grid. The authors matched images b-e of each epoch to image a (``*.MatchKernel.fits``),
took the median of the five matched images per epoch (``reference/Stack-*.fits``, reproduced
exactly by ``_authors_stack``) and differenced the stacks with one more kernel:
FinalDifference = Stack04 - FinalMatchKernel (x) Stack18. coaddx redoes every step with its
own kernels. The files carry no variance or mask planes: variance = max(image, 0) / GAIN +
(1.4826 MAD)², mask 0. Kernels are spatially constant (``spatial_kernel_order=0``): each
cutout has only 4-6 stars, far too few for the 157 unknowns of LSST's order-2 solution
(which measurably overfits: 9 sigma RMS residuals on the stars of the epoch difference).
"""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy import ndimage

import coaddx
from coaddx.diffim.config import PsfMatchConfig
from coaddx.diffim.subtract import subtract
from coaddx.model.exposure import Exposure
from coaddx.sim.simulate import psf_image

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "sfft-decam"
if not DATA.is_dir():
    pytest.skip(f"{DATA} is not present", allow_module_level=True)

EPOCHS = ("04", "18")
OTHERS = "bcde"
CONFIG = PsfMatchConfig(spatial_kernel_order=0)
PLANES = coaddx.mask_planes()
NO_DATA = 1 << PLANES["NO_DATA"]


def _load(name: str) -> Exposure:
    """One cutout as an Exposure (ADU) with a Poisson + sky variance and a Gaussian PSF."""
    with fits.open(DATA / name) as hdul:
        image, header = hdul[0].data.astype(np.float64), hdul[0].header
    sky_sigma = 1.4826 * np.median(np.abs(image - np.median(image)))
    variance = np.maximum(image, 0.0) / header["GAIN"] + sky_sigma**2
    fwhm = float(header["FWHM"])
    return Exposure(
        image,
        np.zeros(image.shape, np.int32),
        variance,
        WCS(header),
        PLANES,
        psf=psf_image(fwhm, "gaussian"),
        psf_fwhm=fwhm,
        mjd=Time(header["DATE"]).mjd,
        exptime=float(header["EXPTIME"]),
        airmass=float(header["AIRMASS"]),
        path=DATA / name,
    )


def _sources(image: np.ndarray, sigma: float) -> np.ndarray:
    """Pixels of sources: sep's 3-sigma segmentation (5 px minimum area), grown by 5 px."""
    import sep

    data = np.ascontiguousarray(np.nan_to_num(image), dtype=np.float64)
    _, seg = sep.extract(data, 3.0, err=sigma, minarea=5, segmentation_map=True)
    return ndimage.binary_dilation(seg > 0, iterations=5)


def _aperture_flux_ratio(science: Exposure, other: Exposure) -> float:
    """Independent photometric scale science/other: summed 15 px aperture fluxes (local
    background from a 20-30 px annulus) of the stars detected at S/N > 30 on ``science``."""
    import sep

    sci = np.ascontiguousarray(science.image, dtype=np.float64)
    oth = np.ascontiguousarray(other.image, dtype=np.float64)
    sigma = float(np.sqrt(np.median(science.variance)))
    obj = sep.extract(sci, 10.0, err=sigma, minarea=5)
    fs, es, _ = sep.sum_circle(sci, obj["x"], obj["y"], 15.0, err=sigma, bkgann=(20.0, 30.0))
    fo, _, _ = sep.sum_circle(oth, obj["x"], obj["y"], 15.0, err=sigma, bkgann=(20.0, 30.0))
    inside = (
        (obj["x"] > 17)
        & (obj["x"] < sci.shape[1] - 18)
        & (obj["y"] > 17)
        & (obj["y"] < sci.shape[0] - 18)
    )
    good = inside & (fs > 30 * es)
    return float(fs[good].sum() / fo[good].sum())


def _authors_stack(epoch: str) -> np.ndarray:
    """sfft's decorr.py: median of image a and b-e convolved with their shipped kernels."""
    from astropy.convolution import convolve

    images = [fits.getdata(DATA / f"DEC-OBS{epoch}a.mini.fits").astype(np.float64)]
    for c in OTHERS:
        image = fits.getdata(DATA / f"DEC-OBS{epoch}{c}.mini.fits").astype(np.float64)
        kernel = fits.getdata(DATA / f"DEC-OBS{epoch}{c}.MatchKernel.fits").astype(np.float64)
        images.append(convolve(image.T, kernel.T, boundary="extend", normalize_kernel=False).T)
    return np.median(images, axis=0)


def _stack(science: Exposure, matched: list[Exposure], statistic: str) -> Exposure:
    """Stack image a with the b-e images matched to it. "mean": inverse-variance weighted,
    variance 1/sum(1/var); "median": variance (pi/2)·mean(var)/n (large-n normal theory).
    Pixels where any input is undefined (the kernel border) are NO_DATA."""
    image = np.stack([science.image, *(m.image for m in matched)]).astype(np.float64)
    var = np.stack([science.variance, *(m.variance for m in matched)]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic == "mean":
            out_var = 1.0 / np.sum(1.0 / var, axis=0)
            out = np.sum(image / var, axis=0) * out_var
        else:
            out = np.median(image, axis=0)
            out_var = np.pi / 2 * var.mean(axis=0) / len(var)
    bad = ~(np.isfinite(out) & np.isfinite(out_var))
    out[bad], out_var[bad] = np.nan, np.nan
    return Exposure(
        out,
        np.where(bad, NO_DATA, 0).astype(np.int32),
        out_var,
        science.wcs,
        PLANES,
        psf_fwhm=science.psf_fwhm,
    )


@pytest.fixture(scope="module")
def matched():
    """Per epoch: image a, the four other images, and their coaddx subtractions (x -> a)."""
    out = {}
    for epoch in EPOCHS:
        science = _load(f"DEC-OBS{epoch}a.mini.fits")
        others = [_load(f"DEC-OBS{epoch}{c}.mini.fits") for c in OTHERS]
        out[epoch] = (science, others, [subtract(x, science, CONFIG) for x in others])
    return out


def test_kernel_sums_against_shipped_kernels_and_photometry(matched):
    """coaddx kernel sums vs the sfft kernels' sums and vs aperture photometry.

    The issue asks for 1 % agreement with the shipped sums; measured -1.9..+2.4 % (mean
    +0.6 %), so the test holds 3 %. The data cannot settle the 1 % level: each cutout has 4-6
    stars whose single-kernel sums scatter by +-3 %, and aperture photometry of the same stars
    (an independent reference) differs from the shipped sums by up to 1.9 % and from coaddx's
    by up to 1.6 %, so both solutions agree with the photometry to 2 %.
    """
    rows = []
    for epoch, (science, others, results) in matched.items():
        for c, other, result in zip(OTHERS, others, results, strict=True):
            ours = result.kernel.kernel_sum(128.0, 128.0)
            shipped = float(fits.getdata(DATA / f"DEC-OBS{epoch}{c}.MatchKernel.fits").sum())
            phot = _aperture_flux_ratio(science, other)
            rows.append((ours / shipped - 1, ours / phot - 1, shipped / phot - 1))
            print(
                f"\nOBS{epoch}{c} -> a: kernel sum {ours:.4f}, shipped {shipped:.4f} "
                f"({100 * rows[-1][0]:+.2f} %), aperture ratio {phot:.4f} (coaddx "
                f"{100 * rows[-1][1]:+.2f} %, shipped {100 * rows[-1][2]:+.2f} %)",
                end="",
            )
    err = np.array(rows)
    print(f"\nmean coaddx/shipped - 1 = {100 * err[:, 0].mean():+.2f} %")
    assert np.abs(err[:, 0]).max() < 0.03
    assert abs(err[:, 0].mean()) < 0.01
    assert np.abs(err[:, 1]).max() < 0.02


def _pixel_kernel_fit(target: np.ndarray, source: np.ndarray, half: int) -> tuple[float, float]:
    """Brute-force reference: the (2 half + 1)² pixel kernel K and constant c minimising
    sum (target - K (x) source - c)² over every pixel where the convolution is defined,
    unweighted (sfft's estimator form: whole image, pixelised kernel, differential
    background). Returns (sum K, formal 1-sigma of sum K for unit-variance residuals
    rescaled by the fit's RMS)."""
    h, w = target.shape
    rows = [
        source[half - dy : h - half - dy, half - dx : w - half - dx].ravel()
        for dy in range(-half, half + 1)
        for dx in range(-half, half + 1)
    ]
    design = np.vstack([*rows, np.ones((h - 2 * half) * (w - 2 * half))])
    t = target[half : h - half, half : w - half].ravel()
    normal = design @ design.T
    coef = np.linalg.solve(normal, design @ t)
    rms = float(np.sqrt(np.mean((t - coef @ design) ** 2)))
    ones = np.r_[np.ones(len(rows)), 0.0]
    return float(coef[:-1].sum()), rms * float(np.sqrt(ones @ np.linalg.solve(normal, ones)))


def test_pixel_kernel_reference_recovers_a_known_kernel():
    """The brute-force reference is exact on a noiseless pair: a 0.97-sum Gaussian kernel and
    a +5 background applied to a real cutout come back to 1e-8."""
    source = fits.getdata(DATA / "DEC-OBS04a.mini.fits").astype(np.float64)
    yy, xx = np.mgrid[-6:7, -6:7]
    kernel = np.exp(-(xx**2 + (yy - 0.5) ** 2) / (2 * 1.8**2))
    kernel *= 0.97 / kernel.sum()
    target = np.zeros_like(source)
    target[6:-6, 6:-6] = (
        sum(
            kernel[dy + 6, dx + 6] * source[6 - dy : 250 - dy, 6 - dx : 250 - dx]
            for dy in range(-6, 7)
            for dx in range(-6, 7)
        )
        + 5.0
    )
    ksum, _ = _pixel_kernel_fit(target, source, 6)
    assert ksum == pytest.approx(0.97, abs=1e-8)


def test_kernel_sums_against_an_independent_whole_image_fit(matched):
    """coaddx's kernel sums (Alard-Lupton, star stamps, variance-weighted) against the
    brute-force whole-image pixel-kernel fit of ``_pixel_kernel_fit`` with the shipped kernels'
    sizes: measured within 0.7 % for all eight pairs, so both estimators read the same
    photometric scale from these cutouts.

    The same reference shows why the 1 % criterion against the shipped kernels cannot be met
    from these cutouts: on OBS04 b-e it differs from the shipped sums by +1.8, +2.4, -1.7 and
    -1.8 %, with the same sign as coaddx's, and every shipped sum lies 3.7-8.8 times the fit's
    formal error (0.2-0.3 %) from it. The
    shipped kernels were solved on the full CCD exposures the cutouts were cut from (their
    headers: "Make Stamp from DEC-OBS04a.fits"), which the data set does not include.
    """
    rows = []
    for epoch, (science, others, results) in matched.items():
        for c, other, result in zip(OTHERS, others, results, strict=True):
            shipped = fits.getdata(DATA / f"DEC-OBS{epoch}{c}.MatchKernel.fits")
            ref, ref_sigma = _pixel_kernel_fit(
                science.image.astype(np.float64),
                other.image.astype(np.float64),
                shipped.shape[0] // 2,
            )
            ours = result.kernel.kernel_sum(128.0, 128.0)
            rows.append((ours / ref - 1, (float(shipped.sum()) - ref) / ref_sigma))
            print(
                f"\nOBS{epoch}{c} -> a: coaddx {ours:.4f}, whole-image pixel fit {ref:.4f} "
                f"+- {ref_sigma:.4f} ({100 * rows[-1][0]:+.2f} %); shipped {shipped.sum():.4f} is "
                f"{rows[-1][1]:+.1f} sigma from it",
                end="",
            )
    rel = np.array(rows)
    assert np.abs(rel[:, 0]).max() < 0.01


def test_single_differences_are_noise_away_from_sources(matched):
    """std(D/sigma) away from sources: measured 0.96-1.03 over the eight pairs."""
    for epoch, (science, _, results) in matched.items():
        sources = _sources(science.image, float(np.sqrt(np.median(science.variance))))
        for c, result in zip(OTHERS, results, strict=True):
            z = result.difference.image / np.sqrt(result.difference.variance)
            clean = np.isfinite(z) & ~sources
            std = float(np.std(z[clean]))
            print(
                f"\nOBS{epoch}{c} -> a: std(D/sigma) = {std:.3f} over {clean.sum()} pixels", end=""
            )
            assert clean.sum() > 40000 and abs(std - 1) < 0.1


def test_authors_stacks_are_reproduced():
    """The recipe of sfft's decorr.py gives the shipped stacks exactly: conventions checked."""
    for epoch in EPOCHS:
        want = fits.getdata(DATA / "reference" / f"Stack-DEC-OBS{epoch}.fits")
        np.testing.assert_allclose(_authors_stack(epoch), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("statistic", "bound_clean", "bound_all"), [("median", 0.6, 1.3), ("mean", 1.0, 1.4)]
)
def test_epoch_difference_against_final_difference(matched, statistic, bound_clean, bound_all):
    """Stack each epoch, subtract Stack18 (FWHM 3.9 px) from Stack04 (5.2 px), compare with
    reference/FinalDifference.fits: RMS of (ours - reference) in units of our noise.

    The noise is sqrt(our difference variance) rescaled by std(D/sigma) away from sources (as
    ScaleVarianceTask would): the variance plane misses the correlations that matching puts
    into the stacks (std(D/sigma) = 0.81 with the median stacks' large-n variance, 1.28 with
    the mean stacks'). With the authors' median stacks the two differences then agree to 0.42
    sigma away from sources and 1.06 sigma overall (the excess is on the stars: the final
    kernel sums differ, 1.018 vs the shipped 1.033); with inverse-variance mean stacks, 0.82
    and 1.15 sigma (mean and median stacks differ by noise). Unscaled: 0.34 / 0.85 and 1.05 /
    1.47. The correlated noise would also make the spatial-kernel clipping (|mean z| > 0.25,
    rms z > 1.5) reject every star, so it is off for the stack subtraction.
    """
    stacks = {}
    for epoch, (science, _, results) in matched.items():
        stacks[epoch] = _stack(science, [r.matched_template for r in results], statistic)
    final = subtract(stacks["18"], stacks["04"], CONFIG.replace(spatial_kernel_clipping=False))
    reference = fits.getdata(DATA / "reference" / "FinalDifference.fits").astype(np.float64)
    sigma = np.sqrt(final.difference.variance.astype(np.float64))
    sources = _sources(stacks["04"].image, float(np.sqrt(np.nanmedian(stacks["04"].variance))))
    z_std = float(np.nanstd((final.difference.image / sigma)[~sources]))
    u = (final.difference.image - reference) / sigma
    ok = np.isfinite(u)
    rms_clean = float(np.sqrt(np.mean(u[ok & ~sources] ** 2)))
    rms_all = float(np.sqrt(np.mean(u[ok] ** 2)))
    shipped = float(fits.getdata(DATA / "FinalMatchKernel.fits").sum())
    print(
        f"\n{statistic} stacks: final kernel sum {final.kernel.kernel_sum(128.0, 128.0):.4f} "
        f"(shipped {shipped:.4f}); std(D/sigma) away from sources {z_std:.3f}; RMS (ours - "
        f"FinalDifference) / noise = {rms_clean / z_std:.3f} away from sources, "
        f"{rms_all / z_std:.3f} over all {ok.sum()} pixels (per unscaled sigma: "
        f"{rms_clean:.3f}, {rms_all:.3f})"
    )
    assert ok.sum() > 40000
    assert rms_clean / z_std < bound_clean and rms_all / z_std < bound_all
