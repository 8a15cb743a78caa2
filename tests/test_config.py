import pytest

import coaddx
from coaddx.config import AssembleConfig, InterpConfig, from_lsst_config


def test_assemble_config_defaults_are_lsst():
    c = AssembleConfig()
    assert c.statistic == "meanclip" and c.sigma_clip == 3.0 and c.clip_iter == 2
    assert c.bad_mask_planes == ("NO_DATA", "BAD", "SAT", "EDGE")
    assert c.calc_error_from_input_variance and c.error_mode == "input"
    assert c.mask_propagation_thresholds == {"SAT": 0.1}
    assert c.remove_mask_planes == ("NOT_DEBLENDED",)
    assert isinstance(c.interp, InterpConfig) and c.subregion_size is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"statistic": "mode"}, "statistic"),
        ({"sigma_clip": -1.0}, "sigma_clip"),
        ({"sigma_clip": float("nan")}, "sigma_clip"),
        ({"clip_iter": 0}, "clip_iter"),
        ({"clip_iter": 2.5}, "clip_iter"),
        ({"mask_propagation_thresholds": {"SAT": 1.5}}, "mask_propagation_thresholds"),
        ({"calc_error_mosaic_mode": True}, "calc_error_mosaic_mode"),
        ({"subregion_size": (0, 10)}, "subregion_size"),
        ({"bad_mask_planes": [1, 2]}, "bad_mask_planes"),
        ({"interp": "yes"}, "interp"),
    ],
)
def test_assemble_config_rejects_nonsense(kwargs, field):
    with pytest.raises(coaddx.ConfigError, match=field):
        AssembleConfig(**kwargs)


def test_config_round_trip_and_lsst_names():
    c = AssembleConfig(statistic="median", subregion_size=128, interp=None)
    assert AssembleConfig.from_dict(c.to_dict()) == c
    lsst = from_lsst_config(
        {
            "statistic": "MEAN",
            "sigmaClip": 2.5,
            "clipIter": 3,
            "badMaskPlanes": ["NO_DATA"],
            "doInterp": False,
        }
    )
    assert (lsst.statistic, lsst.sigma_clip, lsst.clip_iter, lsst.bad_mask_planes, lsst.interp) == (
        "mean",
        2.5,
        3,
        ("NO_DATA",),
        None,
    )
    with pytest.raises(coaddx.ConfigError, match="doFoo"):
        from_lsst_config({"doFoo": True})
    with pytest.raises(coaddx.ConfigError, match="unknown field"):
        AssembleConfig.from_dict({"sigmaClip": 3})
