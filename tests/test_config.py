import dataclasses

import pytest

import coaddx
from coaddx import lsst
from coaddx.coadd.compare_warp.config import (
    CompareWarpConfig,
    DetectionConfig,
    MaskStreaksConfig,
    ScaleVarianceConfig,
)
from coaddx.coadd.config import AssembleConfig, InterpConfig
from coaddx.diffim.config import PsfMatchConfig
from coaddx.lsst import from_lsst_config
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig


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


# -- LSST name maps, one per step (coaddx.lsst) -----------------------------------------------


@pytest.mark.parametrize(
    "names, config",
    [
        (lsst.LSST_ASSEMBLE_NAMES, AssembleConfig),
        (lsst.LSST_INTERP_NAMES, InterpConfig),
        (lsst.LSST_COMPARE_WARP_NAMES, CompareWarpConfig),
        (lsst.LSST_DETECTION_NAMES, DetectionConfig),
        (lsst.LSST_SCALE_VARIANCE_NAMES, ScaleVarianceConfig),
        (lsst.LSST_MASK_STREAKS_NAMES, MaskStreaksConfig),
        (lsst.LSST_WARP_NAMES, WarpConfig),
        (lsst.LSST_PSF_MATCH_NAMES, PsfMatchConfig),
        (lsst.LSST_MODEL_PSF_MATCH_NAMES, ModelPsfMatchConfig),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_lsst_names_map_onto_fields_that_exist(names, config):
    fields = {f.name for f in dataclasses.fields(config)}
    assert names and set(names.values()) <= fields
    assert all("_" not in name for name in names)  # LSST spelling: camelCase


def test_from_lsst_config_warp_round_trip():
    c = from_lsst_config(
        {"warpingKernelName": "lanczos4", "interpLength": 5, "growFullMask": ["EDGE", "BAD"]},
        step="warp",
    )
    assert isinstance(c, WarpConfig)
    assert (c.kernel, c.interp_length, c.grow_full_mask_planes, c.border) == (
        "lanczos4",
        5,
        ("EDGE", "BAD"),
        WarpConfig().border,
    )
    assert from_lsst_config({"border": 10}, c) == WarpConfig(  # step from the base's type
        kernel="lanczos4", interp_length=5, grow_full_mask_planes=("EDGE", "BAD"), border=10
    )


def test_from_lsst_config_psf_match_round_trip():
    c = from_lsst_config(
        {
            "kernelBasisSet": "delta-function",
            "spatialKernelOrder": 1,
            "fitForBackground": True,
            "alardSigGauss": [0.8, 1.6, 3.2],
            "useRegularization": False,
        },
        step="psf_match",
    )
    assert isinstance(c, PsfMatchConfig)
    assert (c.basis, c.spatial_kernel_order, c.fit_for_background, c.al_sigmas) == (
        "delta-function",
        1,
        True,
        (0.8, 1.6, 3.2),
    )
    assert c.df_regularization is None
    on = from_lsst_config({"useRegularization": True}, c)
    assert on.df_regularization == PsfMatchConfig().df_regularization


def test_from_lsst_config_model_psf_match_round_trip():
    c = from_lsst_config(
        {"modelPsf": {"defaultFwhm": 9.0}, "kernelSize": 41, "autoPadPsfTo": 1.5},
        step="model_psf_match",
    )
    assert isinstance(c, ModelPsfMatchConfig)
    assert (c.model_psf_fwhm, c.kernel_size, c.auto_pad_psf_to) == (9.0, 41, 1.5)
    assert (
        from_lsst_config(
            {"modelPsf.defaultFwhm": 9.0, "kernelSize": 41, "autoPadPsfTo": 1.5},
            ModelPsfMatchConfig(),
        )
        == c
    )


def test_from_lsst_config_compare_warp_nested_round_trip():
    c = from_lsst_config(
        {
            "assembleStaticSkyModel": {"statistic": "MEANCLIP", "sigmaClip": 3.0},
            "detect": {"thresholdValue": 6.0, "thresholdPolarity": "both"},
            "detectTemplate": {"doTempLocalBackground": False},
            "scaleWarpVariance": {"background.binSize": 64},
            "maxNumEpochs": 3,
            "badMaskPlanes": ["NO_DATA", "BAD"],  # inherited: the final stack's
            "doInterp": False,
        },
        step="compare_warp",
    )
    default = CompareWarpConfig()
    assert isinstance(c, CompareWarpConfig)
    assert (c.template.statistic, c.template.sigma_clip) == ("meanclip", 3.0)
    assert c.template.clip_iter == default.template.clip_iter
    assert (c.detect.threshold_value, c.detect.threshold_polarity) == (6.0, "both")
    assert c.detect.min_pixels == default.detect.min_pixels
    assert c.detect_template.temp_local_background is None
    assert c.scale_variance.bin_size == 64 and c.max_num_epochs == 3
    assert c.assemble.bad_mask_planes == ("NO_DATA", "BAD") and c.assemble.interp is None
    assert c.assemble.statistic == default.assemble.statistic


def test_from_lsst_config_unknown_names_name_the_step_and_known_names():
    with pytest.raises(coaddx.ConfigError, match=r"'compare_warp'.*maxNumEpochs"):
        from_lsst_config({"doFoo": True}, step="compare_warp")
    with pytest.raises(coaddx.ConfigError, match=r"SourceDetectionConfig.*'bar'.*thresholdValue"):
        from_lsst_config({"detect": {"bar": 1}}, CompareWarpConfig())
    with pytest.raises(coaddx.ConfigError, match=r"'warp'.*warpingKernelName"):
        from_lsst_config({"sigmaClip": 2.0}, step="warp")
    with pytest.raises(coaddx.ConfigError, match="unknown LSST step"):
        from_lsst_config({}, step="calibrate")
    with pytest.raises(coaddx.ConfigError, match="needs a base of type AssembleConfig"):
        from_lsst_config({}, WarpConfig(), step="assemble")
