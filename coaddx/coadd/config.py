"""AssembleCoadd's frozen, validated configuration (the only home of its defaults).

Field names are LSST's in snake_case; defaults equal LSST's (algorithms.md 2.1); the LSST
names are mapped in :mod:`coaddx.lsst`. Optional steps are switched off with ``None``
(``interp=None``). Configs round-trip through ``to_dict``/``from_dict`` and are stored in every
output's provenance. The field checks are :mod:`coaddx.validation`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from coaddx.errors import ConfigError
from coaddx.model.masks import DEFAULT_MASK_PLANES
from coaddx.validation import (
    check,
    check_bool,
    check_number,
    check_positive,
    plane_names,
)

__all__ = ["AssembleConfig", "InterpConfig"]

T_Statistic = Literal["mean", "meanclip", "median"]
STATISTICS = ("mean", "meanclip", "median")


@dataclass(frozen=True, kw_only=True)
class InterpConfig:
    """InterpImageTask over NO_DATA (algorithms.md 1.4).

    ``fallback_value_type`` chooses the value of edge runs: the MEDIAN, MEAN or MEANCLIP (3
    sigma, 3 iterations: afw's StatisticsControl defaults) of the whole coadd image, or
    ``fallback_user_value`` (USER). Unless ``negative_fallback_allowed``, a negative computed
    fallback is raised to 0 and a negative USER value is refused (InterpImageConfig.validate).
    ``plane`` must be a standard mask plane (:data:`coaddx.model.masks.DEFAULT_MASK_PLANES`).
    """

    plane: str = "NO_DATA"
    fallback_value_type: Literal["MEDIAN", "MEAN", "MEANCLIP", "USER"] = "MEDIAN"
    fallback_user_value: float = 0.0
    negative_fallback_allowed: bool = False
    transpose: bool = False

    def __post_init__(self) -> None:
        check(
            self.fallback_value_type in ("MEDIAN", "MEAN", "MEANCLIP", "USER"),
            "InterpConfig",
            "fallback_value_type",
            f"must be MEDIAN, MEAN, MEANCLIP or USER, got {self.fallback_value_type!r}",
        )
        check(
            isinstance(self.plane, str) and bool(self.plane),
            "InterpConfig",
            "plane",
            f"must be a plane name, got {self.plane!r}",
        )
        plane_names(self.plane, "InterpConfig", "plane", DEFAULT_MASK_PLANES)
        check_number(self.fallback_user_value, "InterpConfig", "fallback_user_value", -math.inf)
        check(
            math.isfinite(self.fallback_user_value),
            "InterpConfig",
            "fallback_user_value",
            f"must be finite, got {self.fallback_user_value!r}",
        )
        check_bool(self.negative_fallback_allowed, "InterpConfig", "negative_fallback_allowed")
        check_bool(self.transpose, "InterpConfig", "transpose")
        check(
            self.negative_fallback_allowed
            or self.fallback_value_type != "USER"
            or self.fallback_user_value >= 0,
            "InterpConfig",
            "fallback_user_value",
            f"the USER fallback {self.fallback_user_value!r} is negative but "
            "negative_fallback_allowed is False (set it to True to allow it)",
        )


@dataclass(frozen=True, kw_only=True)
class AssembleConfig:
    """AssembleCoadd configuration (LSST AssembleCoaddConfig defaults).

    Parameters
    ----------
    statistic : {"meanclip", "mean", "median"}
    sigma_clip, clip_iter
        Clipping threshold and number of (non-cumulative) iterations; also used for the
        per-visit weights ``1 / MEANCLIP(variance)``.
    bad_mask_planes
        Planes that make an input pixel unusable (the andMask).
    calc_error_from_input_variance, calc_error_mosaic_mode
        Choose the error formula (both True is an error); both False: sample variance.
    mask_propagation_thresholds
        Plane -> fraction of rejected weight above which the plane is set in the coadd.
    remove_mask_planes
        Planes cleared from the inputs before stacking.
    interp
        :class:`InterpConfig`, or ``None`` to keep the raw stack (no interpolation over
        NO_DATA and no variance clean-up).
    subregion_size
        Fixed ``(rows, columns)`` (or one int) per stacking task; ``None`` lets the planner
        size it from ``coaddx.memory-per-task``. Results do not depend on it.
    epoch_planes
        Also compute the epoch and property planes (first / last / weight-mean MJD,
        weight-mean PSF FWHM, the contributing-visit bitmap: :mod:`coaddx.coadd.epochs`) in
        the same graph. Not an LSST option (LSST builds them as HealSparse maps in a later
        task). Off by default: on 16 visits of 1024 x 1024 they add ~2 % to the MEANCLIP
        compute but ~21 % to assemble + write_coadd (36 more bytes written per pixel;
        ``benchmarks/bench_assemble.py --epochs-only``; the target for on-by-default was
        15 %); ``coaddx demo``, ``coaddx assemble --epoch-planes`` and the quickstart turn
        them on.
    """

    statistic: T_Statistic = "meanclip"
    sigma_clip: float = 3.0
    clip_iter: int = 2
    bad_mask_planes: tuple[str, ...] = ("NO_DATA", "BAD", "SAT", "EDGE")
    calc_error_from_input_variance: bool = True
    calc_error_mosaic_mode: bool = False
    mask_propagation_thresholds: Mapping[str, float] = field(default_factory=lambda: {"SAT": 0.1})
    remove_mask_planes: tuple[str, ...] = ("NOT_DEBLENDED",)
    interp: InterpConfig | None = field(default_factory=InterpConfig)
    subregion_size: tuple[int, int] | None = None
    epoch_planes: bool = False

    def __post_init__(self) -> None:
        cls = "AssembleConfig"
        stat = str(self.statistic).lower()
        check(
            stat in STATISTICS,
            cls,
            "statistic",
            f"must be one of {STATISTICS}, got {self.statistic!r}",
        )
        object.__setattr__(self, "statistic", stat)
        check_positive(self.sigma_clip, cls, "sigma_clip", 1e6)
        check_number(self.clip_iter, cls, "clip_iter", 1, 100, integer=True)
        planes = plane_names(self.bad_mask_planes, cls, "bad_mask_planes", DEFAULT_MASK_PLANES)
        object.__setattr__(self, "bad_mask_planes", planes)
        # removeMaskPlanes: any name; one the data lack is skipped with a warning (assemble)
        object.__setattr__(
            self,
            "remove_mask_planes",
            plane_names(self.remove_mask_planes, cls, "remove_mask_planes"),
        )
        check_bool(self.calc_error_from_input_variance, cls, "calc_error_from_input_variance")
        check_bool(self.calc_error_mosaic_mode, cls, "calc_error_mosaic_mode")
        check_bool(self.epoch_planes, cls, "epoch_planes")
        check(
            not (self.calc_error_from_input_variance and self.calc_error_mosaic_mode),
            cls,
            "calc_error_mosaic_mode",
            "cannot be True together with calc_error_from_input_variance",
        )
        props = self.mask_propagation_thresholds or {}
        check(
            isinstance(props, Mapping),
            cls,
            "mask_propagation_thresholds",
            f"expects a mapping plane -> fraction, got {props!r}",
        )
        thresholds = dict(props)
        for plane, t in thresholds.items():
            check(
                isinstance(plane, str)
                and isinstance(t, int | float)
                and not isinstance(t, bool)
                and 0 <= t <= 1,
                cls,
                "mask_propagation_thresholds",
                f"expects plane -> fraction in [0, 1], got {plane!r}: {t!r}",
            )
        plane_names(tuple(thresholds), cls, "mask_propagation_thresholds", DEFAULT_MASK_PLANES)
        object.__setattr__(self, "mask_propagation_thresholds", thresholds)
        if self.interp is not None:
            check(
                isinstance(self.interp, InterpConfig),
                cls,
                "interp",
                f"must be an InterpConfig or None, got {self.interp!r}",
            )
        if self.subregion_size is not None:
            given: Any = self.subregion_size  # an int is accepted for both sides
            if isinstance(given, int):
                size: tuple[Any, ...] = (given, given)
            else:
                size = tuple(given) if isinstance(given, tuple | list) else (given,)
            check(
                len(size) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in size),
                cls,
                "subregion_size",
                f"must be None or two integers >= 8, got {self.subregion_size!r}",
            )
            object.__setattr__(self, "subregion_size", size)

    @property
    def error_mode(self) -> Literal["input", "mosaic", "sample"]:
        if self.calc_error_from_input_variance:
            return "input"
        return "mosaic" if self.calc_error_mosaic_mode else "sample"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bad_mask_planes"] = list(self.bad_mask_planes)
        out["remove_mask_planes"] = list(self.remove_mask_planes)
        out["subregion_size"] = list(self.subregion_size) if self.subregion_size else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssembleConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"AssembleConfig: unknown field(s) {sorted(unknown)}")
        if isinstance(data.get("interp"), Mapping):
            interp = dict(data["interp"])
            unknown = set(interp) - {f.name for f in dataclasses.fields(InterpConfig)}
            if unknown:
                raise ConfigError(f"AssembleConfig.interp: unknown field(s) {sorted(unknown)}")
            data["interp"] = InterpConfig(**interp)
        for key in ("bad_mask_planes", "remove_mask_planes", "subregion_size"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)

    def replace(self, **changes: Any) -> AssembleConfig:
        return dataclasses.replace(self, **changes)
