"""assemble_dcr and dcr_template: tiling invariance, the zero-residual sum, the loop control of
algorithms.md 4.6, the patch-frame direction, laziness and clear errors."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from scipy import ndimage

import coaddx
from coaddx.dcr.assemble import run_iterations
from coaddx.kernels.dcr import dcr_gain
from coaddx.model.skymap import make_tan_wcs
from coaddx.testing import dcr_scene, raise_if_dask_computes

FAST = {"max_num_iter": 2, "min_num_iter": 1}


def _config(**kw):
    return coaddx.DcrConfig(effective_wavelength=476.31, bandwidth=147.0, **kw)


@pytest.fixture(scope="module")
def scene():
    return dcr_scene(shape=(96, 80), n_visits=6, n_stars=10, seed=3)


def test_tiling_does_not_change_the_result(scene):
    whole = coaddx.assemble_dcr(
        scene.direct, scene.template, _config(subregion_size=(96, 80), **FAST)
    )
    tiled = coaddx.assemble_dcr(
        scene.direct, scene.template, _config(subregion_size=(40, 32), **FAST)
    )
    assert whole.attrs["n_iterations"] == tiled.attrs["n_iterations"] >= 2
    np.testing.assert_allclose(tiled.attrs["convergence"], whole.attrs["convergence"], rtol=1e-12)
    np.testing.assert_array_equal(tiled["image"].values, whole["image"].values)
    np.testing.assert_array_equal(tiled["n_image"].values, whole["n_image"].values)
    assert len(tiled.attrs["convergence_per_tile"][0]) == 3 * 3  # 96/40 x 80/32 tiles
    # the model moved: not template / N any more, and the metric went down
    assert whole.attrs["convergence"][-1] < whole.attrs["convergence"][0]
    spread = np.ptp(whole["image"].values, axis=0).max()
    assert spread > 50.0, spread


def test_outputs_and_attributes(scene):
    out = coaddx.assemble_dcr(scene.direct, scene.template, _config(**FAST))
    assert out["image"].dims == ("subfilter", "y", "x") and out.sizes["subfilter"] == 3
    edges = out["wavelength_low"].values, out["wavelength_high"].values
    np.testing.assert_allclose(edges[0], [402.81, 451.81, 500.81])
    np.testing.assert_allclose(edges[1], [451.81, 500.81, 549.81])
    np.testing.assert_allclose(out["coadd"], out["image"].sum("subfilter"), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["variance"][1], scene.template["variance"] / 3, rtol=1e-6)
    np.testing.assert_array_equal(out["mask"][2], scene.template["mask"])
    # n_image: per sub-filter counts of usable visits through the inverse shifts, at most V
    n_image = out["n_image"].values
    assert n_image.max() == 6 and n_image[:, 40, 40].tolist() == [6, 6, 6]
    assert out.attrs["gains"][0] == pytest.approx(0.5)  # base gain 1 / (N - 1)
    assert out.attrs["dcr"]["pixel_scale"] == 0.2 and "config" in out.attrs


def test_coadd_equals_template_when_residuals_are_zero():
    """Every visit equals the (positive) template and there is no DCR at the zenith: the model
    does not move and the sum of the sub-filter outputs is the template."""
    s = dcr_scene(shape=(64, 64), n_visits=4, n_stars=6, background=50.0, seed=5)
    direct = s.direct.copy()
    direct["image"] = direct["image"] * 0 + s.template["image"]
    direct["elevation"] = direct["elevation"] * 0 + 90.0
    out = coaddx.assemble_dcr(direct, s.template, _config())
    assert max(out.attrs["convergence"]) < 1e-6  # rounding of template / 3 only
    np.testing.assert_allclose(out["coadd"], s.template["image"], rtol=1e-6)
    np.testing.assert_allclose(out["image"][0], s.template["image"] / 3, rtol=1e-6)


class _ScriptedSolver:
    """Stands in for DcrSolver: metric sums that follow a script, one entry per pass."""

    def __init__(self, metrics):
        self.metrics, self.k = list(metrics), 0

    def metric_sums(self):
        m = self.metrics[min(self.k, len(self.metrics) - 1)]
        total = np.array([[m, 1.0], [m, 1.0]])
        return total, total[None]

    def step(self, gain):
        self.k += 1


@pytest.mark.parametrize(
    ("script", "updates", "stop"),
    [
        ([1.0 * 0.5**i for i in range(30)], 11, "maximum iterations"),  # 9 + 2 updates
        ([1.0, 0.5, 0.4, 0.39, 0.3899, 0.38989, 0.38989], 4, "converged"),  # min N + 1
        ([1.0, 0.5, 0.4, 0.3, 0.2, 0.25], 5, "diverged"),
        ([1.0, 0.0], 1, "metric is zero"),
    ],
)
def test_loop_control_follows_lsst(script, updates, stop):
    record = run_iterations(_ScriptedSolver(script), _config(), None)
    assert record["n_iterations"] == updates and record["stop"] == stop
    assert record["convergence"][: updates + 1] == pytest.approx(script[: updates + 1])
    first = min(2, updates)
    assert record["gains"][:first] == [0.5] * first  # base gain until three metrics exist
    if updates > 2:  # then the progressive gain of the metrics so far
        want = dcr_gain(script[:3], [0.5, 0.5], base_gain=0.5)
        assert record["gains"][2] == pytest.approx(want)


def test_without_convergence_runs_max_iterations_at_base_gain():
    record = run_iterations(
        _ScriptedSolver([1.0, 0.5, 0.6, 0.7]), _config(use_convergence=False), None
    )
    assert record["n_iterations"] == 11 and set(record["gains"]) == {0.5}


def _lsst_cd_angle(wcs, q):
    """LSST's earlier calculateImageParallacticAngle from the CD matrix (unflipped WCS)."""
    cd = wcs.pixel_scale_matrix
    cd_angle = (np.arctan2(cd[0, 1], -cd[0, 0]) + np.arctan2(cd[1, 0], cd[1, 1])) / 2
    return math.degrees(cd_angle) - q


def test_rotated_patch_wcs_sets_the_direction():
    wcs = make_tan_wcs(SkyCoord(150.0, -30.0, unit="deg"), (40.0, 40.0), 0.25, rotation=35.0)
    s = dcr_scene(shape=(80, 80), n_visits=3, n_stars=4, wcs=wcs, seed=2)
    direct = s.direct.assign(rotation_angle=("visit", [10.0, 20.0, 30.0]))  # ignored on a grid
    out = coaddx.assemble_dcr(direct, s.template, _config(max_num_iter=1, min_num_iter=1))
    q = direct["parallactic_angle"].values
    want = [(_lsst_cd_angle(wcs, v) + 180) % 360 - 180 for v in q]
    got = (out["zenith_angle_in_patch"].values + 180) % 360 - 180
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert out.attrs["dcr"]["pixel_scale"] == pytest.approx(0.25, rel=1e-4)
    ref = coaddx.dcr_shifts(
        effective_wavelength=476.31,
        bandwidth=147.0,
        n_subfilters=3,
        elevation=float(direct["elevation"][0]),
        parallactic_angle=want[0],
        pixel_scale=0.25,
    )
    np.testing.assert_allclose(out["dcr_shift"][0], ref, rtol=1e-3)
    # without a WCS: LSST's rotation-0 frame, theta = q - rotation_angle
    bare = direct.copy()
    bare.attrs = {k: v for k, v in direct.attrs.items() if k != "wcs"}
    t2 = s.template.copy()
    t2.attrs = dict(bare.attrs)
    out2 = coaddx.assemble_dcr(bare, t2, _config(max_num_iter=1, min_num_iter=1))
    np.testing.assert_allclose(out2["zenith_angle_in_patch"], q - [10.0, 20.0, 30.0])


def test_dcr_template_is_the_lazy_shifted_sum(scene):
    out = coaddx.assemble_dcr(scene.direct, scene.template, _config(**FAST))
    with raise_if_dask_computes():
        model = coaddx.dcr_template(out, elevation=40.0, parallactic_angle=25.0)
    assert isinstance(model.data, da.Array) and model.dims == ("y", "x")
    shifts = coaddx.dcr_shifts(
        effective_wavelength=476.31,
        bandwidth=147.0,
        n_subfilters=3,
        elevation=40.0,
        parallactic_angle=25.0,
        pixel_scale=0.2,
        split=True,
    )
    images = out["image"].values.astype(np.float64)
    want = np.zeros(images.shape[1:])
    for k in range(3):  # brute force: two bilinear shifts per split sub-filter, averaged
        for member in range(2):
            want += ndimage.shift(images[k], shifts[k, member], order=1, mode="constant") / 2
    np.testing.assert_allclose(model.values, want, rtol=1e-9, atol=1e-9)
    assert isinstance(out["image"].data, da.Array)  # the outputs are dask arrays


def test_bad_inputs_raise_clear_errors(scene):
    d, t = scene.direct, scene.template
    with pytest.raises(coaddx.ConfigError, match="DcrConfig"):
        coaddx.assemble_dcr(d, t, {"effective_wavelength": 476.0})
    with pytest.raises(coaddx.InputError, match="visit 0: no parallactic_angle"):
        coaddx.assemble_dcr(d.drop_vars("parallactic_angle"), t, _config())
    bad = d.copy()
    bad["parallactic_angle"] = bad["parallactic_angle"].where(bad.visit != 2)
    with pytest.raises(coaddx.InputError, match="visit 2: no parallactic_angle"):
        coaddx.assemble_dcr(bad, t, _config())
    with pytest.raises(coaddx.InputError, match="visit 0: no elevation and no airmass"):
        coaddx.assemble_dcr(d.drop_vars("elevation"), t, _config())
    with pytest.raises(coaddx.InputError, match="template is 90 x 80"):
        coaddx.assemble_dcr(d, t.isel(y=slice(0, 90)), _config())
    no_det = t.copy()
    no_det["mask"] = no_det["mask"] * 0
    with pytest.raises(coaddx.InputError, match="template has no DETECTED"):
        coaddx.assemble_dcr(d, no_det.assign_attrs(mask_planes={"BAD": 0}), _config())
    with pytest.raises(coaddx.InputError, match="convergence mask planes"):
        coaddx.assemble_dcr(d.assign_attrs(mask_planes={"BAD": 0}), t, _config())
    with pytest.raises(coaddx.InputError, match="no 'variance' layer"):
        coaddx.assemble_dcr(d.drop_vars("variance"), t, _config())
    with pytest.raises(coaddx.ConfigError, match="elevation"):
        coaddx.dcr_template(
            xr_dcr := coaddx.assemble_dcr(d, t, _config(max_num_iter=1, min_num_iter=1)),
            elevation=95.0,
            parallactic_angle=0.0,
        )
    with pytest.raises(coaddx.InputError, match="assemble_dcr"):
        coaddx.dcr_template(xr_dcr.drop_attrs(), elevation=45.0, parallactic_angle=0.0)


def test_airmass_stands_in_for_elevation(scene):
    d = scene.direct.drop_vars("elevation")
    airmass = 1.0 / np.sin(np.radians(scene.direct["elevation"].values))
    d = d.assign(airmass=("visit", airmass))
    out = coaddx.assemble_dcr(d, scene.template, _config(max_num_iter=1, min_num_iter=1))
    np.testing.assert_allclose(out["elevation"], scene.direct["elevation"], rtol=1e-9)


def test_recovers_the_colours_of_bright_stars():
    """At airmass 1.4-2 the bluest-minus-reddest flux fraction of every star (the colour the
    centroid's motion with airmass measures) comes out of the model; template / N has 0."""
    s = dcr_scene(
        shape=(96, 96), n_visits=10, n_stars=8, elevation=(30.0, 45.0), noise=0.3, seed=11
    )
    out = coaddx.assemble_dcr(s.direct, s.template, _config())
    images = out["image"].values
    got, want = [], []
    for y, x, f in zip(s.y, s.x, s.flux, strict=True):
        iy, ix = round(y), round(x)
        g = images[:, iy - 6 : iy + 7, ix - 6 : ix + 7].sum(axis=(1, 2))
        got.append((g[0] - g[2]) / g.sum())
        want.append((f[0] - f[2]) / f.sum())
    err = np.abs(np.subtract(got, want))
    print(f"bluest-reddest fraction: max error {err.max():.3f}, truth spread {np.ptp(want):.2f}")
    assert err.max() < 0.12 and np.corrcoef(got, want)[0, 1] > 0.97


def test_artifact_masks_reject_the_no_data_spans(scene):
    """findArtifacts on the direct warps against the template (4.5): where the template has no
    data the difference is NaN, the span becomes NO_DATA and no visit counts there."""
    t = scene.template.copy(deep=True)
    t["image"][30:40, 30:40] = np.nan
    cfg = _config(max_num_iter=1, min_num_iter=1)
    found = coaddx.assemble_dcr(scene.direct, t, cfg)
    plain = coaddx.assemble_dcr(
        scene.direct, t, _config(max_num_iter=1, min_num_iter=1, find_artifacts=False)
    )
    assert (found["n_image"].values[:, 32:38, 32:38] == 0).all()
    assert (plain["n_image"].values[:, 32:38, 32:38] == 6).all()
    np.testing.assert_array_equal(found["n_image"][:, :20], plain["n_image"][:, :20])
