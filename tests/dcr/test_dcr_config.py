"""DcrConfig: LSST's DcrAssembleCoaddConfig defaults (algorithms.md 4.1) and clear errors."""

import dataclasses

import pytest

import coaddx


def test_defaults_are_lsst_s():
    c = coaddx.DcrConfig(effective_wavelength=476.31, bandwidth=147.0)
    assert (c.n_subfilters, c.convergence_threshold, c.split_threshold) == (3, 0.001, 0.1)
    assert (c.max_iterations, c.min_iterations, c.gain) == (9, 3, 0.5)  # 3N, N, 1/(N-1)
    assert c.regularize_model_iterations == 2.0 and c.regularization_max_diff == 2.0
    assert c.convergence_mask_planes == ("DETECTED",) and c.accelerate_model == 3.0
    assert c.use_progressive_gain and c.use_model_weights and c.split_subfilters
    assert not c.do_airmass_weight and c.image_interp_order == 1 and c.model_weights_width == 3
    assert c.observatory == coaddx.LSST_SITE and c.weather is None and c.pixel_scale == 0.2
    four = dataclasses.replace(c, n_subfilters=4)
    assert (four.max_iterations, four.min_iterations, four.gain) == (12, 4, pytest.approx(1 / 3))
    assert dataclasses.replace(c, base_gain=0.2, max_num_iter=5).gain == 0.2
    assert c.to_dict()["convergence_mask_planes"] == ["DETECTED"]


def test_wavelength_and_bandwidth_are_required():
    with pytest.raises(TypeError):
        coaddx.DcrConfig()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"effective_wavelength": 100.0}, "effective_wavelength"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"bandwidth": 600.0}, "bandwidth"),
        ({"n_subfilters": 1}, "n_subfilters"),
        ({"n_subfilters": 2.5}, "n_subfilters"),
        ({"max_num_iter": 2, "min_num_iter": 5}, "min_num_iter"),
        ({"base_gain": 0.0}, "base_gain"),
        ({"use_convergence": 1}, "use_convergence"),
        ({"split_threshold": -0.1}, "split_threshold"),
        ({"regularization_width": 0}, "regularization_width"),
        ({"image_interp_order": 0}, "image_interp_order"),
        ({"accelerate_model": 0.5}, "accelerate_model"),
        ({"pixel_scale": 0.0}, "pixel_scale"),
        ({"convergence_mask_planes": [""]}, "convergence_mask_planes"),
        ({"observatory": (0.0, 0.0, 0.0)}, "observatory"),
        ({"weather": 20.0}, "weather"),
    ],
)
def test_bad_fields_are_named(changes, field):
    with pytest.raises(coaddx.ConfigError, match=f"DcrConfig.{field}"):
        coaddx.DcrConfig(**({"effective_wavelength": 476.31, "bandwidth": 147.0} | changes))


def test_lsst_dcr_names_carry_over():
    from coaddx.lsst import LSST_DCR_NAMES

    fields = {f.name for f in dataclasses.fields(coaddx.DcrConfig)}
    assert set(LSST_DCR_NAMES.values()) <= fields
    c = coaddx.from_lsst_config(
        {"effectiveWavelength": 476.31, "bandwidth": 147.0, "dcrNumSubfilters": 4, "baseGain": 0.2},
        step="dcr",
    )
    assert (c.n_subfilters, c.gain, c.effective_wavelength) == (4, 0.2, 476.31)
    base = coaddx.DcrConfig(effective_wavelength=600.0, bandwidth=100.0)
    assert coaddx.from_lsst_config({"splitThreshold": 0.2}, base).split_threshold == 0.2


def test_lsst_dcr_names_need_the_required_fields():
    with pytest.raises(coaddx.ConfigError, match="effectiveWavelength"):
        coaddx.from_lsst_config({"baseGain": 0.2}, step="dcr")
    with pytest.raises(coaddx.ConfigError, match="DcrAssembleCoaddConfig field 'nope'"):
        coaddx.from_lsst_config(
            {"nope": 1}, coaddx.DcrConfig(effective_wavelength=600.0, bandwidth=100.0)
        )
