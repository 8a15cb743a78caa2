"""The options of :func:`coaddx.kernels.stack.stack_block`, checked once, as one frozen value.

:class:`StackOptions` holds the afw ``statisticsStack`` settings (the statistic, clipping, error
mode, bad bits, mask propagation and mask map) plus the kernel's tunables (segment sizes, the
visit count above which selection replaces the sorting network). :meth:`StackOptions.kernel`
packs them into the plain arrays and scalars the compiled kernel takes (:class:`KernelOptions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "ERROR_INPUT",
    "ERROR_MODES",
    "ERROR_MOSAIC",
    "ERROR_SAMPLE",
    "MAX_VISITS",
    "MEAN",
    "MEANCLIP",
    "MEDIAN",
    "NETWORK_MAX_VISITS",
    "STATISTICS",
    "KernelOptions",
    "StackOptions",
    "check_bits",
    "readonly",
    "segment_length",
]

Statistic = Literal["mean", "meanclip", "median"]
ErrorMode = Literal["input", "mosaic", "sample"]

STATISTICS = ("mean", "meanclip", "median")
ERROR_MODES = ("input", "mosaic", "sample")

#: Codes of the statistics and error modes inside the compiled kernel (their index above).
MEAN, MEANCLIP, MEDIAN = 0, 1, 2
ERROR_INPUT, ERROR_MOSAIC, ERROR_SAMPLE = 0, 1, 2

#: Most visits of one block (NPOINT and n_image share one int32 per pixel).
MAX_VISITS = (1 << 15) - 1
#: Default visit count above which a per-pixel selection replaces the sorting network
#: (measured crossover 2000-4000 visits).
NETWORK_MAX_VISITS = 4096

MEAN_SEGMENT = 4096  # pixels per segment of the mean pass (accumulators stay in L1/L2)
SORT_BUFFER_BYTES = 128 * 1024  # target size of the (visit, pixel) sort block (within L2)
SORT_WIDTH = (64, 512)  # bounds on the pixels of one sort block
FILL_BUFFER_BYTES = 512 * 1024  # target size of the (visit, pixel) value copy (about L2)
FILL_MIN = 512  # fewest pixels per segment of the value copy (long rows stream well)


class KernelOptions(NamedTuple):
    """The options as the compiled kernel takes them (one numba named tuple)."""

    stat: int
    err: int
    bad: np.int32  # andMask
    keep: np.int32  # ~remove_bits
    clipped_bit: np.int32
    no_data_bit: np.int32
    clip_iter: int
    sigma_clip: float
    pbits: np.ndarray  # int32 propagated bits
    pthr: np.ndarray  # float64 their thresholds
    mfrom: np.ndarray  # int32 mask map sources
    mto: np.ndarray  # int32 mask map targets


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    """How :func:`~coaddx.kernels.stack.stack_block` stacks (afw statisticsStack).

    Parameters
    ----------
    statistic : {"mean", "meanclip", "median"}
    bad_mask : int
        andMask: inputs with any of these bits are rejected.
    sigma_clip, clip_iter : float, int
        numSigmaClip and numIter of "meanclip" (clip_iter >= 1, finite sigma_clip >= 0).
    error_mode : {"input", "mosaic", "sample"}
        Variance of the mean: Σw²σ²/(Σw)² (calcErrorFromInputVariance), Σwσ²/Σw (mosaic mode) or
        var·Σw²/(Σw)² from the weighted sample variance. "median" always uses π/2·var/n.
    propagate_bits, propagate_thresholds : sequences of equal length
        Bit values and threshold fractions of maskPropagationThresholds.
    clipped_bit : int
        Bit value OR-ed where NCLIPPED > 0.
    map_from, map_to : sequences of equal length
        maskMap pairs of bit values, applied where NMASKED > 0 to the OR of the masks of ALL
        included inputs (accepted ones too, afw semantics).
    no_data_bit : int
        Replaces the mask where NPOINT == 0 (value and variance are NaN there).
    remove_bits : int
        Bits cleared from every input mask after counting n_image and before the statistic, the
        OR mask and the mask map (removeMaskPlanes).
    network_max_visits : int
        Above this many included visits "median" and "meanclip" select per pixel instead of
        sorting columns with a sorting network (same results).
    segment_pixels, sort_block_pixels : int or None
        Pixels per segment and per sort block; None derives them from cache-sized buffers
        (:func:`segment_length`). Results do not depend on them.

    Examples
    --------
    >>> opts = StackOptions(statistic="meanclip", bad_mask=1, propagate_bits=[2],
    ...                     propagate_thresholds=[0.1])
    >>> opts.propagate_bits, opts.kernel().stat
    ((2,), 1)
    """

    statistic: Statistic
    bad_mask: int
    sigma_clip: float = 3.0
    clip_iter: int = 2
    error_mode: ErrorMode = "input"
    propagate_bits: tuple[int, ...] = ()
    propagate_thresholds: tuple[float, ...] = ()
    clipped_bit: int = 0
    map_from: tuple[int, ...] = ()
    map_to: tuple[int, ...] = ()
    no_data_bit: int = 0
    remove_bits: int = 0
    network_max_visits: int = NETWORK_MAX_VISITS
    segment_pixels: int | None = None
    sort_block_pixels: int | None = None

    def __post_init__(self) -> None:
        _choice(self.statistic, STATISTICS, "statistic")
        _choice(self.error_mode, ERROR_MODES, "error_mode")
        if self.statistic == "meanclip" and (
            int(self.clip_iter) < 1 or not 0 <= float(self.sigma_clip) < math.inf
        ):
            raise ValueError(
                f"'meanclip' needs clip_iter >= 1 and a finite sigma_clip >= 0, got "
                f"{self.clip_iter!r} and {self.sigma_clip!r}"
            )
        for name in ("bad_mask", "clipped_bit", "no_data_bit", "remove_bits"):
            check_bits(getattr(self, name), name)
        for first, second in (
            ("propagate_bits", "propagate_thresholds"),
            ("map_from", "map_to"),
        ):
            a, b = tuple(getattr(self, first)), tuple(getattr(self, second))
            if len(a) != len(b):
                raise ValueError(f"{first} pairs have unequal lengths ({len(a)} and {len(b)})")
            object.__setattr__(self, first, a)
            object.__setattr__(self, second, b)
        for name in ("propagate_bits", "map_from", "map_to"):
            for v in getattr(self, name):
                check_bits(v, name)

    def kernel(self) -> KernelOptions:
        """The options as the compiled kernel takes them."""
        return KernelOptions(
            stat=STATISTICS.index(self.statistic),
            err=ERROR_MODES.index(self.error_mode),
            bad=np.int32(self.bad_mask),
            keep=np.int32(~int(self.remove_bits)),
            clipped_bit=np.int32(self.clipped_bit),
            no_data_bit=np.int32(self.no_data_bit),
            clip_iter=int(self.clip_iter),
            sigma_clip=float(self.sigma_clip),
            pbits=readonly(np.array([int(b) for b in self.propagate_bits], np.int32)),
            pthr=readonly(np.array(self.propagate_thresholds, np.float64).reshape(-1)),
            mfrom=readonly(np.array([int(b) for b in self.map_from], np.int32)),
            mto=readonly(np.array([int(b) for b in self.map_to], np.int32)),
        )

    def segments(self, nvisit: int, itemsize: int) -> tuple[int, int]:
        """(pixels per segment, columns per sort block) for ``nvisit`` included visits."""
        seg, width = segment_length(STATISTICS.index(self.statistic), nvisit, itemsize)
        seg = seg if self.segment_pixels is None else int(self.segment_pixels)
        width = width if self.sort_block_pixels is None else int(self.sort_block_pixels)
        return seg, width


def _choice(name: str, choices: tuple[str, ...], what: str) -> None:
    if name not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {name!r}")


def check_bits(value: int, what: str) -> int:
    """``value`` as an int, if it is a bit value in 0 .. 2**31-1 (else ValueError)."""
    value = int(value)
    if not 0 <= value < 2**31:
        raise ValueError(f"{what} must be a bit value in 0 .. 2**31-1, got {value}")
    return value


def segment_length(stat: int, nvisit: int, itemsize: int) -> tuple[int, int]:
    """(pixels per segment, columns per sort block) from cache-sized buffers, for a statistic
    code and a number of visits."""
    if stat == MEAN:
        return MEAN_SEGMENT, 0
    width = SORT_BUFFER_BYTES // (nvisit * itemsize) // 16 * 16
    width = min(SORT_WIDTH[1], max(SORT_WIDTH[0], width))
    seg = max(FILL_BUFFER_BYTES // (nvisit * itemsize), FILL_MIN) // width * width
    return int(min(MEAN_SEGMENT, max(width, seg))), int(width)


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles one specialisation for read-only and writeable inputs
    alike (dask often hands over read-only blocks)."""
    view = array.view()
    view.flags.writeable = False
    return view
