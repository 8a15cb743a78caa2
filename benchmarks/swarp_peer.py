"""Small helpers to run SWarp (resample only) on a given output grid and read its outputs back.

SWarp's pixel convention is FITS (1-based, pixel centres at integers); a ``.resamp.fits`` file
covers only the part of the output frame its input reaches, with ``CRPIX`` shifted by the
integer offset of its first pixel. :func:`read_resampled` places it back into a full-grid,
0-based array, so that pixel ``[j, i]`` is the same sky pixel as coaddx's ``[j, i]``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["cd_header", "read_resampled", "run_swarp", "swarp_version", "write_head"]


def swarp_binary() -> str:
    for name in ("SWarp", "swarp"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("SWarp is not installed (neither `SWarp` nor `swarp` is on PATH)")


def swarp_version() -> str:
    out = subprocess.run([swarp_binary(), "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()


def cd_header(wcs: WCS, shape: tuple[int, int] | None = None) -> fits.Header:
    """A plain TAN header with an explicit CD matrix (and NAXIS1/2 if ``shape`` is given): the
    form every WCS reader (SWarp's included) reads the same way."""
    w = wcs.celestial
    cd = w.wcs.cd if w.wcs.has_cd() else w.wcs.get_pc() * w.wcs.cdelt[:, None]
    h = fits.Header()
    if shape is not None:
        h["NAXIS"] = 2
        h["NAXIS1"] = int(shape[1])
        h["NAXIS2"] = int(shape[0])
    h["CTYPE1"], h["CTYPE2"] = w.wcs.ctype[0], w.wcs.ctype[1]
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = float(w.wcs.crval[0]), float(w.wcs.crval[1])
    h["CRPIX1"], h["CRPIX2"] = float(w.wcs.crpix[0]), float(w.wcs.crpix[1])
    h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    h["EQUINOX"] = 2000.0
    h["RADESYS"] = "ICRS"
    return h


def write_head(path: Path, wcs: WCS, shape: tuple[int, int]) -> Path:
    """The SWarp output-grid ``.head`` file (ASCII cards) for ``wcs`` and ``(rows, cols)``."""
    text = cd_header(wcs, shape).tostring(sep="\n", endcard=True, padding=False)
    path.write_text(text + "\n")
    return path


def run_swarp(
    images: Sequence[Path], workdir: Path, resample_dir: Path, params: Mapping[str, str]
) -> subprocess.CompletedProcess:
    """Run SWarp on ``images`` in ``workdir`` (which holds ``coadd.head``); command-line
    parameters override SWarp's built-in defaults (no configuration file is read)."""
    args = [
        swarp_binary(),
        *[str(p) for p in images],
        "-c",
        "/dev/null",
        "-IMAGEOUT_NAME",
        str(workdir / "coadd.fits"),
        "-WEIGHTOUT_NAME",
        str(workdir / "coadd.weight.fits"),
        "-RESAMPLE_DIR",
        str(resample_dir),
    ]
    for key, value in params.items():
        args += [f"-{key}", str(value)]
    out = subprocess.run(args, cwd=workdir, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"SWarp failed ({out.returncode}): {out.stderr[-2000:]}")
    return out


def read_resampled(
    path: Path, weight_path: Path, patch_wcs: WCS, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A ``.resamp.fits`` image and its weight placed into a full ``shape`` grid of
    ``patch_wcs`` (0-based; weight 0 and image NaN outside what SWarp wrote)."""
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        hdr = hdul[0].header
    with fits.open(weight_path, memmap=False) as hdul:
        weight = np.asarray(hdul[0].data, dtype=np.float32)
    dx = patch_wcs.wcs.crpix[0] - hdr["CRPIX1"]
    dy = patch_wcs.wcs.crpix[1] - hdr["CRPIX2"]
    ox, oy = round(float(dx)), round(float(dy))
    if abs(dx - ox) > 1e-6 or abs(dy - oy) > 1e-6:
        raise ValueError(f"{path}: CRPIX offset ({dx}, {dy}) from the output grid is not integer")
    image = np.full(shape, np.nan, np.float32)
    wfull = np.zeros(shape, np.float32)
    ny, nx = data.shape
    image[oy : oy + ny, ox : ox + nx] = data
    wfull[oy : oy + ny, ox : ox + nx] = weight
    image[wfull <= 0] = np.nan
    return image, wfull
