"""Every LSST config-name map in one place, and ``from_lsst_config`` to carry LSST overrides over.

LSST users keep their pipeline overrides in camelCase (``{"sigmaClip": 2.5}``); each step's
table maps them onto the coaddx field of the same meaning:

=====================  ==============================  ==================================
step                   LSST task config                coaddx config, name map
=====================  ==============================  ==================================
``"assemble"``         AssembleCoaddConfig             AssembleConfig,
                                                       ``LSST_ASSEMBLE_NAMES``
``"compare_warp"``     CompareWarpAssembleCoaddConfig  CompareWarpConfig,
                                                       ``LSST_COMPARE_WARP_NAMES``
``"warp"``             MakeWarpConfig (warper)         WarpConfig, ``LSST_WARP_NAMES``
``"psf_match"``        ImagePsfMatchConfig             PsfMatchConfig,
                                                       ``LSST_PSF_MATCH_NAMES``
``"model_psf_match"``  ModelPsfMatchConfig             ModelPsfMatchConfig,
                                                       ``LSST_MODEL_PSF_MATCH_NAMES``
``"dcr"``              DcrAssembleCoaddConfig          DcrConfig, ``LSST_DCR_NAMES``
                       (effectiveWavelength and
                       bandwidth required)
=====================  ==============================  ==================================

Sub-configs take a dict of their own LSST names (``{"assembleStaticSkyModel": {"sigmaClip":
3.0}, "detect": {"thresholdValue": 5.0}}``; maps ``LSST_DETECTION_NAMES``,
``LSST_SCALE_VARIANCE_NAMES``, ``LSST_MASK_STREAKS_NAMES``, ``LSST_INTERP_NAMES``). LSST's
dotted names of nested fields (``"modelPsf.defaultFwhm"``) are given as they are, or as a
nested dict. LSST's ``doX`` / ``useX`` switches of an optional step map to ``None`` when
False. Upper-case statistic names (``"MEANCLIP"``) are mapped here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, overload

from coaddx.coadd.compare_warp.config import (
    CompareWarpConfig,
    DetectionConfig,
    MaskStreaksConfig,
    ScaleVarianceConfig,
)
from coaddx.coadd.config import AssembleConfig, InterpConfig
from coaddx.dcr.config import DcrConfig
from coaddx.diffim.config import PsfMatchConfig
from coaddx.errors import ConfigError
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig

__all__ = [
    "LSST_ASSEMBLE_NAMES",
    "LSST_COMPARE_WARP_NAMES",
    "LSST_DCR_NAMES",
    "LSST_DETECTION_NAMES",
    "LSST_INTERP_NAMES",
    "LSST_MASK_STREAKS_NAMES",
    "LSST_MODEL_PSF_MATCH_NAMES",
    "LSST_PSF_MATCH_NAMES",
    "LSST_SCALE_VARIANCE_NAMES",
    "LSST_WARP_NAMES",
    "from_lsst_config",
]

T_Step = Literal["assemble", "compare_warp", "warp", "psf_match", "model_psf_match", "dcr"]

#: LSST AssembleCoaddConfig field -> coaddx AssembleConfig field.
LSST_ASSEMBLE_NAMES: dict[str, str] = {
    "statistic": "statistic",
    "sigmaClip": "sigma_clip",
    "clipIter": "clip_iter",
    "badMaskPlanes": "bad_mask_planes",
    "calcErrorFromInputVariance": "calc_error_from_input_variance",
    "maskPropagationThresholds": "mask_propagation_thresholds",
    "removeMaskPlanes": "remove_mask_planes",
    "subregionSize": "subregion_size",
    "doInterp": "interp",
    "interpImage": "interp",
}

#: LSST InterpImageConfig field -> coaddx InterpConfig field (AssembleCoadd's ``interpImage``).
LSST_INTERP_NAMES: dict[str, str] = {
    "fallbackValueType": "fallback_value_type",
    "fallbackUserValue": "fallback_user_value",
    "negativeFallbackAllowed": "negative_fallback_allowed",
    "transpose": "transpose",
}

#: LSST CompareWarpAssembleCoaddConfig field -> coaddx CompareWarpConfig field. The
#: AssembleCoaddConfig fields it inherits (``sigmaClip``, ``badMaskPlanes``, ...) set the final
#: stack, ``CompareWarpConfig.assemble``.
LSST_COMPARE_WARP_NAMES: dict[str, str] = {
    "assembleStaticSkyModel": "template",
    "detect": "detect",
    "detectTemplate": "detect_template",
    "detectTemplateIterMultiplier": "detect_template_iter_multiplier",
    "maxDetectTemplateIter": "max_detect_template_iter",
    "maxNumEpochs": "max_num_epochs",
    "maxFractionEpochsLow": "max_fraction_epochs_low",
    "maxFractionEpochsHigh": "max_fraction_epochs_high",
    "spatialThreshold": "spatial_threshold",
    "doScaleWarpVariance": "do_scale_warp_variance",
    "scaleWarpVariance": "scale_variance",
    "doPreserveContainedBySource": "do_preserve_contained_by_source",
    "doPrefilterArtifacts": "do_prefilter_artifacts",
    "prefilterArtifactsMaskPlanes": "prefilter_artifacts_mask_planes",
    "prefilterArtifactsRatio": "prefilter_artifacts_ratio",
    "doFilterMorphological": "do_filter_morphological",
    "streakMaskName": "streak_mask_name",
    "growStreakFp": "grow_streak_fp",
    "maskStreaks": "mask_streaks",
    "subregionSize": "subregion_size",
}

#: LSST SourceDetectionConfig field -> coaddx DetectionConfig field (CompareWarp's ``detect``
#: and ``detectTemplate``).
LSST_DETECTION_NAMES: dict[str, str] = {
    "thresholdValue": "threshold_value",
    "thresholdType": "threshold_type",
    "thresholdPolarity": "threshold_polarity",
    "minPixels": "min_pixels",
    "nSigmaToGrow": "n_sigma_to_grow",
    "isotropicGrow": "isotropic_grow",
    "doTempLocalBackground": "temp_local_background",
    "tempLocalBackground.binSize": "temp_local_background",
    "reEstimateBackground": "re_estimate_background",
}

#: LSST ScaleVarianceConfig field -> coaddx ScaleVarianceConfig field.
LSST_SCALE_VARIANCE_NAMES: dict[str, str] = {
    "maskPlanes": "mask_planes",
    "limit": "limit",
    "background.binSize": "bin_size",
}

#: LSST MaskStreaksConfig field -> coaddx MaskStreaksConfig field (the one with the same
#: meaning: the Hough transform's angle step in degrees).
LSST_MASK_STREAKS_NAMES: dict[str, str] = {
    "thetaBinSize": "theta_step",
}

#: LSST MakeWarpConfig field (its ``warper``, and the selection border) -> coaddx WarpConfig
#: field.
LSST_WARP_NAMES: dict[str, str] = {
    "warpingKernelName": "kernel",
    "interpLength": "interp_length",
    "growFullMask": "grow_full_mask_planes",
    "border": "border",
}

#: LSST ImagePsfMatchConfig (PsfMatchConfigAL / PsfMatchConfigDF and the detection settings)
#: field -> coaddx PsfMatchConfig field.
LSST_PSF_MATCH_NAMES: dict[str, str] = {
    "kernelBasisSet": "basis",
    "kernelSize": "kernel_size",
    "scaleByFwhm": "scale_by_fwhm",
    "kernelSizeMin": "kernel_size_min",
    "kernelSizeMax": "kernel_size_max",
    "spatialModelType": "spatial_model",
    "spatialKernelOrder": "spatial_kernel_order",
    "spatialBgOrder": "spatial_bg_order",
    "fitForBackground": "fit_for_background",
    "sizeCellX": "size_cell",
    "sizeCellY": "size_cell",
    "nStarPerCell": "n_star_per_cell",
    "maxSpatialIterations": "max_spatial_iterations",
    "usePcaForSpatialKernel": "use_pca",
    "numPrincipalComponents": "n_principal_components",
    "singleKernelClipping": "single_kernel_clipping",
    "kernelSumClipping": "kernel_sum_clipping",
    "spatialKernelClipping": "spatial_kernel_clipping",
    "badMaskPlanes": "bad_mask_planes",
    "candidateResidualMeanMax": "candidate_residual_mean_max",
    "candidateResidualStdMax": "candidate_residual_std_max",
    "maxKsumSigma": "max_ksum_sigma",
    "constantVarianceWeighting": "constant_variance_weighting",
    "alardNGauss": "al_n_gauss",
    "alardDegGauss": "al_degrees",
    "alardSigGauss": "al_sigmas",
    "alardGaussBeta": "al_beta",
    "alardMinSig": "al_min_sig",
    "alardMinSigDeconv": "al_min_sig_deconv",
    "useRegularization": "df_regularization",
    "regularizationType": "df_regularization",
    "centralRegularizationStencil": "df_stencil",
    "forwardRegularizationOrders": "df_orders",
    "regularizationBorderPenalty": "df_border_penalty",
    "lambdaValue": "df_lambda_value",
    "detThreshold": "detection_threshold",
    "fpGrowKernelScaling": "fp_grow_kernel_scaling",
    "convolveTemplate": "convolve_template",
}

#: LSST MakePsfMatchedWarp / ModelPsfMatchConfig field -> coaddx ModelPsfMatchConfig field.
LSST_MODEL_PSF_MATCH_NAMES: dict[str, str] = {
    "modelPsf.defaultFwhm": "model_psf_fwhm",
    "kernelSize": "kernel_size",
    "alardSigGauss": "al_sigmas",
    "alardDegGauss": "al_degrees",
    "autoPadPsfTo": "auto_pad_psf_to",
}


#: LSST DcrAssembleCoaddConfig field -> coaddx DcrConfig field (algorithms.md 4.1).
LSST_DCR_NAMES: dict[str, str] = {
    "dcrNumSubfilters": "n_subfilters",
    "effectiveWavelength": "effective_wavelength",
    "bandwidth": "bandwidth",
    "maxNumIter": "max_num_iter",
    "minNumIter": "min_num_iter",
    "convergenceThreshold": "convergence_threshold",
    "useConvergence": "use_convergence",
    "baseGain": "base_gain",
    "useProgressiveGain": "use_progressive_gain",
    "doAirmassWeight": "do_airmass_weight",
    "modelWeightsWidth": "model_weights_width",
    "useModelWeights": "use_model_weights",
    "splitSubfilters": "split_subfilters",
    "splitThreshold": "split_threshold",
    "regularizeModelIterations": "regularize_model_iterations",
    "regularizeModelFrequency": "regularize_model_frequency",
    "convergenceMaskPlanes": "convergence_mask_planes",
    "regularizationWidth": "regularization_width",
    "imageInterpOrder": "image_interp_order",
    "accelerateModel": "accelerate_model",
    "doCalculatePsf": "do_calculate_psf",
    "badMaskPlanes": "bad_mask_planes",
    "subregionSize": "subregion_size",
}


@dataclasses.dataclass(frozen=True)
class _Step:
    """One LSST config and its coaddx counterpart."""

    task: str  # the LSST config, for messages
    config: type
    names: Mapping[str, str]
    switches: frozenset[str] = frozenset()  # LSST doX / useX: False -> None
    upper: frozenset[str] = frozenset()  # fields whose LSST values are upper-case names
    inherited: str | None = None  # field that takes the LSST names of a parent config


#: The steps ``from_lsst_config`` takes, by name.
_STEPS: dict[str, _Step] = {
    "assemble": _Step(
        "AssembleCoaddConfig",
        AssembleConfig,
        LSST_ASSEMBLE_NAMES,
        switches=frozenset({"doInterp"}),
        upper=frozenset({"statistic"}),
    ),
    "compare_warp": _Step(
        "CompareWarpAssembleCoaddConfig",
        CompareWarpConfig,
        LSST_COMPARE_WARP_NAMES,
        inherited="assemble",
    ),
    "warp": _Step("MakeWarpConfig", WarpConfig, LSST_WARP_NAMES),
    "psf_match": _Step(
        "ImagePsfMatchConfig",
        PsfMatchConfig,
        LSST_PSF_MATCH_NAMES,
        switches=frozenset({"useRegularization"}),
    ),
    "model_psf_match": _Step(
        "ModelPsfMatchConfig", ModelPsfMatchConfig, LSST_MODEL_PSF_MATCH_NAMES
    ),
    "dcr": _Step("DcrAssembleCoaddConfig", DcrConfig, LSST_DCR_NAMES),
}

#: Sub-configs, by type (the nested dicts of a step).
_SUB_STEPS: dict[type, _Step] = {
    **{s.config: s for s in _STEPS.values()},
    InterpConfig: _Step("InterpImageConfig", InterpConfig, LSST_INTERP_NAMES),
    DetectionConfig: _Step(
        "SourceDetectionConfig",
        DetectionConfig,
        LSST_DETECTION_NAMES,
        switches=frozenset({"doTempLocalBackground"}),
    ),
    ScaleVarianceConfig: _Step(
        "ScaleVarianceConfig", ScaleVarianceConfig, LSST_SCALE_VARIANCE_NAMES
    ),
    MaskStreaksConfig: _Step("MaskStreaksConfig", MaskStreaksConfig, LSST_MASK_STREAKS_NAMES),
}

#: A sub-config that the LSST config makes optional: its class, built when switched on.
_OPTIONAL: dict[tuple[type, str], type] = {(AssembleConfig, "interp"): InterpConfig}

C = TypeVar(
    "C",
    AssembleConfig,
    CompareWarpConfig,
    WarpConfig,
    PsfMatchConfig,
    ModelPsfMatchConfig,
    DcrConfig,
)


def _step(step: str) -> _Step:
    if step not in _STEPS:
        raise ConfigError(f"unknown LSST step {step!r}; known: {sorted(_STEPS)}")
    return _STEPS[step]


def _step_of(base: Any, step: str | None) -> _Step:
    if step is not None:
        spec = _step(step)
        if base is not None and not isinstance(base, spec.config):
            raise ConfigError(
                f"step {step!r} needs a base of type {spec.config.__name__}, got "
                f"{type(base).__name__}"
            )
        return spec
    if base is None:
        return _STEPS["assemble"]
    for spec in _STEPS.values():
        if isinstance(base, spec.config):
            return spec
    raise ConfigError(f"from_lsst_config: no LSST step for a {type(base).__name__} base")


def _flatten(overrides: Mapping[str, Any], spec: _Step) -> dict[str, Any]:
    """``{"modelPsf": {"defaultFwhm": 9}}`` -> ``{"modelPsf.defaultFwhm": 9}`` where the
    dotted name is in the map (sub-configs keep their dict)."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if isinstance(value, Mapping) and name not in spec.names:
            dotted = {f"{name}.{k}": v for k, v in value.items()}
            if all(k in spec.names for k in dotted):
                out.update(dotted)
                continue
        out[name] = value
    return out


def _unknown(spec: _Step, name: str, extra: Mapping[str, str] | None = None) -> ConfigError:
    known = sorted({*spec.names, *(extra or {})})
    step = next((k for k, s in _STEPS.items() if s is spec), None)
    where = f"step {step!r}" if step else "sub-config"
    return ConfigError(
        f"LSST {spec.task} field {name!r} has no coaddx equivalent ({where}, coaddx "
        f"{spec.config.__name__}); known: {known}"
    )


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _convert(spec: _Step, base: Any, overrides: Mapping[str, Any]) -> Any:
    """``base`` with the LSST ``overrides`` of ``spec`` applied."""
    changes: dict[str, Any] = {}
    switches: dict[str, bool] = {}
    inherited: dict[str, Any] = {}
    parent = _SUB_STEPS[type(getattr(base, spec.inherited))] if spec.inherited else None
    for name, value in _flatten(overrides, spec).items():
        if name not in spec.names:
            if parent is None or name not in parent.names:
                raise _unknown(spec, name, parent.names if parent else None)
            inherited[name] = value
        elif name in spec.switches:
            switches[spec.names[name]] = bool(value)
        else:
            key = spec.names[name]
            changes[key] = _value(spec, key, changes.get(key, getattr(base, key)), value)
    if parent is not None and spec.inherited and inherited:
        changes[spec.inherited] = _convert(parent, getattr(base, spec.inherited), inherited)
    for key, on in switches.items():
        changes[key] = _switched(spec, key, changes.get(key, getattr(base, key)), on)
    return dataclasses.replace(base, **changes)


def _value(spec: _Step, key: str, current: Any, value: Any) -> Any:
    """The coaddx value of field ``key`` for the LSST ``value`` (a dict for a sub-config)."""
    if isinstance(value, Mapping):
        if current is None and (spec.config, key) in _OPTIONAL:
            current = _OPTIONAL[(spec.config, key)]()
        if type(current) in _SUB_STEPS:
            return _convert(_SUB_STEPS[type(current)], current, value)
    if key in spec.upper:
        return str(value).lower()
    if isinstance(value, list):  # an LSST ListField: the frozen configs hold tuples
        return tuple(value)
    return value


def _switched(spec: _Step, key: str, current: Any, on: bool) -> Any:
    """A ``doX`` switch: off is ``None``; on keeps the value, else the field's default."""
    if not on:
        return None
    if current is not None:
        return current
    if (spec.config, key) in _OPTIONAL:
        return _OPTIONAL[(spec.config, key)]()
    default = _field_default(spec.config, key)
    if default is None:
        names = sorted(n for n, f in spec.names.items() if f == key and n not in spec.switches)
        raise ConfigError(f"LSST {spec.task}: switching {key} on needs a value; give {names}")
    return default


@overload
def from_lsst_config(overrides: Mapping[str, Any], base: C, *, step: T_Step | None = None) -> C: ...


@overload
def from_lsst_config(
    overrides: Mapping[str, Any],
    base: None = None,
    *,
    step: Literal["assemble"] | None = None,
) -> AssembleConfig: ...


@overload
def from_lsst_config(
    overrides: Mapping[str, Any], base: None = None, *, step: T_Step
) -> (
    AssembleConfig
    | CompareWarpConfig
    | WarpConfig
    | PsfMatchConfig
    | ModelPsfMatchConfig
    | DcrConfig
): ...


def from_lsst_config(
    overrides: Mapping[str, Any], base: Any = None, *, step: T_Step | None = None
) -> Any:
    """Carry LSST config overrides over, e.g. ``{"sigmaClip": 2.5}``.

    Parameters
    ----------
    overrides : mapping
        LSST field name -> value, in the LSST config of ``step``. A sub-config takes a dict
        of its own LSST names (``{"assembleStaticSkyModel": {"sigmaClip": 3.0}}``).
        ``statistic`` values are LSST's upper-case names (``"MEANCLIP"``); ``doX`` / ``useX``
        switches that are False map to ``None`` (``doInterp=False`` -> ``interp=None``).
    base : config, optional
        The config to change (default: the step's defaults).
    step : {"assemble", "compare_warp", "warp", "psf_match", "model_psf_match", "dcr"}, optional
        Default: inferred from ``base``'s type, else ``"assemble"``.

    Returns
    -------
    The step's config (``AssembleConfig``, ``CompareWarpConfig``, ``WarpConfig``,
    ``PsfMatchConfig``, ``ModelPsfMatchConfig`` or ``DcrConfig``).

    Raises
    ------
    ConfigError
        On a name with no coaddx equivalent (the message names the LSST config and the known
        names), or a value the coaddx config rejects.

    Examples
    --------
    >>> from_lsst_config({"sigmaClip": 2.5, "statistic": "MEAN"}).statistic
    'mean'
    >>> from_lsst_config({"warpingKernelName": "lanczos4"}, step="warp").kernel
    'lanczos4'
    """
    spec = _step_of(base, step)
    return _convert(spec, base if base is not None else _default(spec, overrides), overrides)


def _default(spec: _Step, overrides: Mapping[str, Any]) -> Any:
    """The step's default config; DcrAssembleCoaddConfig has required fields, taken from the
    overrides (as LSST requires them in the pipeline config)."""
    if spec.config is not DcrConfig:
        return spec.config()
    missing = [n for n in ("effectiveWavelength", "bandwidth") if n not in overrides]
    if missing:
        raise ConfigError(
            f"LSST DcrAssembleCoaddConfig: {missing} have no default; give them in the "
            "overrides or pass a DcrConfig as base"
        )
    return DcrConfig(
        effective_wavelength=overrides["effectiveWavelength"], bandwidth=overrides["bandwidth"]
    )
