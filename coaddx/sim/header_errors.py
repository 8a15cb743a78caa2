"""Calexp headers with the errors a calibration has to remove: a perturbed WCS and PHOTCALIB.

``simulate(wcs_error=..., zero_point_error=...)`` renders the pixels exactly as without them and
writes each calexp's header WCS shifted by ``wcs_error`` arcsec in a random direction, rotated
by a random angle of up to ``0.05 * wcs_error`` degrees (0.1 degree for 2") and scaled by up to
``5e-4 * wcs_error`` about its reference pixel, and its PHOTCALIB off by a normal draw of
``zero_point_error`` mag. The draws come from their own seeded stream, so the pixels, the truth
tables and the other outputs do not change; ``truth/calexp_errors.ecsv`` lists them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from astropy.wcs import WCS

__all__ = ["HeaderError", "draw_header_error", "perturb_wcs"]


def perturb_wcs(wcs: WCS, *, shift_arcsec: float, pa_deg: float, rotation_deg: float, scale: float):
    """A TAN ``wcs`` (CD or PC form, no SIP) with its reference sky point moved by
    ``shift_arcsec`` towards position angle ``pa_deg`` (east of north), and its pixel matrix
    rotated by ``rotation_deg`` and multiplied by ``1 + scale`` about the reference pixel."""
    out = WCS(naxis=2)
    out.wcs.ctype = list(wcs.wcs.ctype)
    out.wcs.crpix = wcs.wcs.crpix
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    out.wcs.cd = rot @ wcs.pixel_scale_matrix * (1.0 + scale)
    ra, dec = wcs.wcs.crval
    pa = math.radians(pa_deg)
    d = shift_arcsec / 3600.0
    out.wcs.crval = [ra + d * math.sin(pa) / math.cos(math.radians(dec)), dec + d * math.cos(pa)]
    out.wcs.set()
    return out


class HeaderError(NamedTuple):
    """The errors written into one calexp header (see the module docstring)."""

    shift_arcsec: float
    pa_deg: float
    rotation_deg: float
    scale: float
    dmag: float


def draw_header_error(
    rng: np.random.Generator, wcs_error: float, zero_point_error: float
) -> HeaderError:
    """The errors of one header (see the module docstring); zeros for zero arguments."""
    u = rng.uniform(size=3)
    dmag = float(rng.normal(0.0, zero_point_error)) if zero_point_error > 0 else 0.0
    return HeaderError(
        float(wcs_error),
        360.0 * float(u[0]),
        0.05 * wcs_error * (2.0 * float(u[1]) - 1.0),
        5e-4 * wcs_error * (2.0 * float(u[2]) - 1.0),
        dmag,
    )
