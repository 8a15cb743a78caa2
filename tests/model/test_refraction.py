"""Refraction and DCR sub-filter shifts (algorithms.md 4.2-4.3) against LSST's reference values
and analytic properties."""

import math

import numpy as np
import pytest

import coaddx
from coaddx.model.refraction import (
    default_weather,
    differential_refraction,
    parallactic_angle,
    refraction,
    subfilter_edges,
)

# ip_diffim tests/test_dcrModel.py::testDcrCalculation
LSST_WEATHER = coaddx.Weather(temperature=20.0, pressure=73892.0, humidity=40.0)
LSST_SHIFTS = np.array(
    [
        [-0.587550080368824, -0.28495575189083666],
        [-0.019158809951774006, -0.009291825969480522],
        [0.38855779160585996, 0.18844653649028056],
    ]
)


def _shifts(**kw):
    args = {
        "effective_wavelength": 476.31,
        "bandwidth": 147.0,
        "n_subfilters": 3,
        "elevation": 65.0,
        "parallactic_angle": parallactic_angle(30.0, 65.0, coaddx.LSST_SITE.latitude),
        "pixel_scale": 0.2,
        "weather": LSST_WEATHER,
    }
    return coaddx.dcr_shifts(**(args | kw))


def test_parallactic_angle_of_the_lsst_reference_pointing():
    assert parallactic_angle(30.0, 65.0, coaddx.LSST_SITE.latitude) == pytest.approx(
        -154.135, abs=1e-3
    )


def test_dcr_shifts_match_the_lsst_reference():
    np.testing.assert_allclose(_shifts(), LSST_SHIFTS, rtol=1e-3)


def test_subfilters_are_ordered_blue_to_red_with_lsst_signs():
    edges = subfilter_edges(476.31, 147.0, 3)
    assert edges[0, 0] == pytest.approx(476.31 - 73.5) and edges[-1, 1] == pytest.approx(549.81)
    np.testing.assert_allclose(np.diff(edges, axis=1), 49.0)
    # amplitude along the parallactic direction: blue refracts more (towards the zenith)
    q = math.radians(parallactic_angle(30.0, 65.0, coaddx.LSST_SITE.latitude))
    amp = _shifts() @ np.array([math.cos(q), math.sin(q)])
    assert amp[0] > 0 > amp[-1] and np.all(np.diff(amp) < 0)


def test_split_pairs_straddle_the_unsplit_shift():
    split = _shifts(split=True)
    assert split.shape == (3, 2, 2)
    np.testing.assert_allclose(split.mean(axis=1), _shifts(), rtol=1e-12)
    # 0.75/0.25 and 0.25/0.75 of the edges: the pair spans half the sub-filter's refraction range
    edges = subfilter_edges(476.31, 147.0, 3)
    dr = differential_refraction(edges, 476.31, 65.0, coaddx.LSST_SITE, LSST_WEATHER)
    width_px = np.abs(dr[:, 1] - dr[:, 0]) * 3600 / 0.2
    np.testing.assert_allclose(np.hypot(*(split[:, 0] - split[:, 1]).T), width_px / 2, rtol=1e-12)


def test_rotation_angle_rotates_the_shifts():
    base = _shifts(parallactic_angle=40.0)
    np.testing.assert_allclose(_shifts(parallactic_angle=50.0, rotation_angle=10.0), base)
    np.testing.assert_allclose(np.hypot(*_shifts(parallactic_angle=0.0).T), np.hypot(*base.T))
    north = _shifts(parallactic_angle=0.0)
    np.testing.assert_allclose(north[:, 1], 0.0, atol=1e-15)  # along +y only


def test_refraction_grows_towards_the_horizon_and_vanishes_at_the_zenith():
    r = [float(refraction(500.0, e, weather=LSST_WEATHER)) for e in (90.0, 60.0, 30.0)]
    assert abs(r[0]) < 1e-12 and 0 < r[1] < r[2]
    # about 1 arcmin at 45 degrees at sea level, less at altitude
    sea = coaddx.Observatory(latitude=0.0, longitude=0.0, height=0.0)
    assert 50 < float(refraction(550.0, 45.0, sea)) * 3600 < 65


def test_default_weather_follows_the_altitude_rule():
    w = default_weather(2663.0)
    assert w.temperature == pytest.approx(19 - 6.5 * 2.663)
    expected = 101325.0 * math.exp(
        -9.80665 * 0.0289644 * 2663.0 / (8.31447 * (w.temperature + 273.15))
    )
    assert w.pressure == pytest.approx(expected) and w.humidity == 40.0
    np.testing.assert_allclose(
        _shifts(weather=None), _shifts(weather=w), rtol=1e-15
    )  # None builds the default


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_scale": 0.0}, "pixel_scale"),
        ({"bandwidth": -1.0}, "bandwidth"),
        ({"n_subfilters": 0}, "n_subfilters"),
        ({"elevation": 0.0}, "elevation"),
        ({"effective_wavelength": 3000.0, "bandwidth": 10.0}, "wavelength"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kwargs, match):
    with pytest.raises(coaddx.ConfigError, match=match):
        _shifts(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (coaddx.Weather, {"temperature": 20.0, "pressure": -1.0, "humidity": 40.0}, "pressure"),
        (coaddx.Weather, {"temperature": 20.0, "pressure": 7e4, "humidity": 0.0}, "humidity"),
        (coaddx.Weather, {"temperature": "hot", "pressure": 7e4, "humidity": 40.0}, "temperature"),
        (coaddx.Observatory, {"latitude": 95.0, "longitude": 0.0, "height": 0.0}, "latitude"),
        (
            coaddx.Observatory,
            {"latitude": float("nan"), "longitude": 0.0, "height": 0.0},
            "latitude",
        ),
    ],
)
def test_bad_sites_and_weather_are_refused(cls, kwargs, match):
    with pytest.raises(coaddx.ConfigError, match=match):
        cls(**kwargs)
