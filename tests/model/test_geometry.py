"""Tests for coaddx.geometry: the destination -> source mapping and footprint overlaps.

Tolerances (measured values in brackets): the 10-px interpolated mapping over a 2048 x 2048
destination, rotated 30 deg with a 1.3x scale change, stays within 0.01 px of the exact one for
a TAN source [1.3e-9 px], a TAN-SIP source with 1.7 px of distortion [3.2e-5 px] and a TPV source
with 5.8 px of distortion [1.3e-4 px]; the relative area agrees with finite differences of the
exact mapping to 1e-4 relative. Grid nodes are exact (1e-9 px).
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from coaddx.model.geometry import exposure_overlaps, map_pixels, pixel_scale, source_coordinates
from coaddx.model.skymap import make_tan_wcs

CENTRE = SkyCoord(150.0, 2.0, unit="deg")


def _tan(crpix=(1023.5, 1023.5), scale=0.2, rotation=0.0, centre=CENTRE):
    return make_tan_wcs(centre, crpix, scale, rotation)


def _sip(crpix, scale, rotation):
    """A TAN-SIP WCS with ~2 px of quadratic/cubic distortion at the corners of 2048 x 4096."""
    header = _tan(crpix, scale, rotation).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header.update(
        A_ORDER=3,
        B_ORDER=3,
        A_2_0=2e-7,
        A_0_2=-1e-7,
        A_1_1=1.5e-7,
        B_1_1=3e-7,
        B_2_0=-1e-7,
        A_3_0=1e-10,
        B_0_3=-1e-10,
        A_1_2=5e-11,
    )
    return WCS(header)


def _tpv(crpix, scale, rotation, linear=1.0):
    """A TPV WCS (PV polynomial on intermediate coordinates in degrees), ~5 px distortion."""
    header = _tan(crpix, scale, rotation).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    header.update(
        PV1_0=0.0,
        PV1_1=linear,
        PV1_2=0.0,
        PV1_4=0.02,
        PV1_5=-0.01,
        PV1_7=0.3,
        PV2_0=0.0,
        PV2_1=linear,
        PV2_2=0.0,
        PV2_4=-0.015,
        PV2_6=0.01,
        PV2_9=-0.2,
    )
    return WCS(header)


SOURCES = {
    "tan": lambda: _tan((1023.5, 2047.5), 0.2 / 1.3, 30.0),
    "sip": lambda: _sip((1023.5, 2047.5), 0.2 / 1.3, 30.0),
    "tpv": lambda: _tpv((1023.5, 2047.5), 0.2 / 1.3, 30.0),
}


def _distortion(wcs):
    """Largest pixel offset of the WCS from its own TAN part over a 2048 x 4096 source."""
    y, x = np.mgrid[0:4096:64, 0:2048:64].astype(float)
    tan = _tan((1023.5, 2047.5), 0.2 / 1.3, 30.0)
    tx, ty = map_pixels(wcs, tan, x, y)
    return float(np.hypot(tx - x, ty - y).max())


@pytest.mark.parametrize("kind", SOURCES)
def test_source_coordinates_interpolation_within_0p01_px(kind):
    src = SOURCES[kind]()
    dest = _tan()
    if kind != "tan":
        assert _distortion(src) > 1.0
    x, y, area = source_coordinates(dest, src, (2048, 2048), interp_length=10)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 2048, 20000), np.arange(2048), np.full(2048, 2047)])
    cols = np.concatenate([rng.integers(0, 2048, 20000), np.full(2048, 2047), np.arange(2048)])
    ex, ey = map_pixels(dest, src, cols.astype(float), rows.astype(float))
    assert np.hypot(x[rows, cols] - ex, y[rows, cols] - ey).max() < 0.01
    ax, ay = map_pixels(dest, src, cols - 1.0, rows.astype(float))
    bx, by = map_pixels(dest, src, cols.astype(float), rows - 1.0)
    exact_area = np.abs((ex - ax) * (ey - by) - (ey - ay) * (ex - bx))
    np.testing.assert_allclose(area[rows, cols], exact_area, rtol=1e-4)
    assert abs(np.median(area) - 1.69) < 0.01  # 1.3x larger destination pixels


@pytest.mark.parametrize("interp_length", [0, 1])
def test_source_coordinates_exact_without_interpolation(interp_length):
    src, dest = SOURCES["sip"](), _tan()
    x, y, area = source_coordinates(
        dest, src, (30, 40), interp_length=interp_length, origin=(900, 1000)
    )
    yy, xx = np.indices((30, 40), dtype=float)
    ex, ey = map_pixels(dest, src, xx + 900, yy + 1000)
    np.testing.assert_allclose(x, ex, rtol=0, atol=1e-9)
    np.testing.assert_allclose(y, ey, rtol=0, atol=1e-9)
    ax, ay = map_pixels(dest, src, xx + 899, yy + 1000)
    bx, by = map_pixels(dest, src, xx + 900, yy + 999)
    np.testing.assert_allclose(
        area, np.abs((ex - ax) * (ey - by) - (ey - ay) * (ex - bx)), rtol=1e-9
    )


def test_source_coordinates_nodes_are_exact_and_origin_shifts_the_box():
    src, dest = SOURCES["tpv"](), _tan()
    x, y, _ = source_coordinates(dest, src, (95, 123), origin=(500, 700))
    # nodes sit on the grid extended by one pixel on the low side: rows/cols 9, 19, ... and last
    rows, cols = np.r_[9:95:10, 94], np.r_[9:123:10, 122]
    ex, ey = map_pixels(dest, src, cols[None, :] + 500.0, rows[:, None] + 700.0)
    np.testing.assert_allclose(x[np.ix_(rows, cols)], ex, rtol=0, atol=1e-9)
    np.testing.assert_allclose(y[np.ix_(rows, cols)], ey, rtol=0, atol=1e-9)
    full_x, full_y, _ = source_coordinates(dest, src, (800, 700), interp_length=0)
    sub_x, sub_y, _ = source_coordinates(dest, src, (95, 123), origin=(500, 700), interp_length=0)
    np.testing.assert_array_equal(sub_x, full_x[700:795, 500:623])
    np.testing.assert_array_equal(sub_y, full_y[700:795, 500:623])


def test_source_coordinates_empty_and_single_pixel():
    dest = _tan()
    x, y, area = source_coordinates(dest, dest, (0, 5))
    assert x.shape == y.shape == area.shape == (0, 5)
    x, y, area = source_coordinates(dest, dest, (1, 1), origin=(7, 3))
    assert (x[0, 0], y[0, 0]) == pytest.approx((7.0, 3.0), abs=1e-9)
    assert area[0, 0] == pytest.approx(1.0, rel=1e-9)


def test_world_to_pixel_divergent_sip_inverse_gives_nan():
    header = _tan((1023.5, 2047.5), 0.2).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header.update(A_ORDER=3, B_ORDER=3, A_2_0=1e-4, B_0_2=1e-4, A_3_0=1e-6, B_0_3=-1e-6)
    strong = WCS(header)
    x, y = np.array([1000.0, 20000.0, -30000.0]), np.array([2000.0, 20000.0, -30000.0])
    px, py = map_pixels(_tan((1023.5, 2047.5), 0.2), strong, x, y)
    assert np.isnan(px[1:]).all() and np.isnan(py[1:]).all()
    lon, lat = strong.pixel_to_world_values(px[0], py[0])
    assert np.allclose(
        _tan((1023.5, 2047.5), 0.2).world_to_pixel_values(lon, lat), (1000, 2000), atol=1e-6
    )


def _shifted(dx, dy, rotation=0.0, scale=0.2):
    """A source WCS whose pixel (0, 0) sits at destination pixel (dx, dy) of _tan()."""
    return _tan((1023.5 - dx, 1023.5 - dy), scale, rotation)


@pytest.mark.parametrize(
    ("name", "src", "shape", "border", "expected"),
    [
        ("disjoint", _shifted(300, 300), (100, 100), 0, False),
        ("partial", _shifted(-50, 150), (100, 100), 0, True),
        ("contains the destination", _shifted(-100, -100), (400, 400), 0, True),
        ("inside the destination", _shifted(80, 90), (20, 30), 0, True),
        ("just outside", _shifted(205, 50), (100, 100), 0, False),
        ("just outside, border grows it", _shifted(205, 50), (100, 100), 10, True),
        ("touching edge only", _shifted(200, 50), (100, 100), 0, False),
        (
            "far side of the sky",
            _tan(centre=SkyCoord(330.0, -2.0, unit="deg")),
            (100, 100),
            0,
            False,
        ),
    ],
)
def test_exposure_overlaps_truth_table(name, src, shape, border, expected):
    assert exposure_overlaps(src, shape, _tan(), (200, 200), border=border) is expected


def test_exposure_overlaps_uses_the_polygon_not_its_bounding_box():
    # a 45-degree diamond whose bounding box covers the destination corner (-0.5, -0.5) but
    # whose lower-right edge passes outside it
    # (centre at destination pixel (-60, -60), vertices 70.7 px away: the edge x + y = -49.3)
    src = _tan((49.5, 49.5), 0.2, 45.0)
    src.wcs.crval = _tan().pixel_to_world_values(-60.0, -60.0)
    src.wcs.set()
    assert not exposure_overlaps(src, (100, 100), _tan(), (200, 200))
    assert not exposure_overlaps(src, (100, 100), _tan(), (200, 200), border=24)
    assert exposure_overlaps(src, (100, 100), _tan(), (200, 200), border=26)
    hull = map_pixels(
        src, _tan(), np.array([-0.5, 99.5, 99.5, -0.5]), np.array([-0.5, -0.5, 99.5, 99.5])
    )
    assert max(hull[0]) > -0.5 and max(hull[1]) > -0.5  # bounding boxes do overlap


def test_pixel_scale_tan_rotated_and_tpv_linear_term():
    assert pixel_scale(_tan(scale=0.2)) == pytest.approx(0.2, rel=1e-8)
    assert pixel_scale(_tan(scale=0.333, rotation=37.0)) == pytest.approx(0.333, rel=1e-8)
    assert pixel_scale(_tpv((10.0, 10.0), 0.2, 0.0, linear=1.1)) == pytest.approx(0.22, rel=1e-6)
