"""The per-visit weight statistic of AssembleCoadd (prepareInputs): MEANCLIP of a warp's
variance plane over its good pixels, named by the config fields that define it.

A :class:`WeightStatistic` is what a coadd step asks for; its :attr:`~WeightStatistic.key`
is the name under which the warp store caches the value per visit (the format is the one
stores have always been written with, so older stores keep their cached statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from coaddx.coadd.config import AssembleConfig

__all__ = ["WeightStatistic", "cached_variance_meanclip", "weight_statistic"]


@dataclass(frozen=True)
class WeightStatistic:
    """MEANCLIP(variance) with ``sigma_clip``, ``clip_iter``, over pixels without any of
    ``bad_mask_planes`` (stored sorted: the order of the planes does not matter)."""

    sigma_clip: float
    clip_iter: int
    bad_mask_planes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma_clip", float(self.sigma_clip))
        object.__setattr__(self, "clip_iter", int(self.clip_iter))
        object.__setattr__(self, "bad_mask_planes", tuple(sorted(self.bad_mask_planes)))

    @property
    def key(self) -> str:
        """The store's key of this statistic: ``"<sigma_clip:g>/<clip_iter>/<PLANE,...>"``."""
        planes = ",".join(self.bad_mask_planes)
        return f"{self.sigma_clip:g}/{self.clip_iter}/{planes}"


def weight_statistic(config: AssembleConfig) -> WeightStatistic:
    """The weight statistic an AssembleCoadd config computes its visit weights with."""
    return WeightStatistic(config.sigma_clip, config.clip_iter, config.bad_mask_planes)


def cached_variance_meanclip(warps: xr.Dataset, statistic: WeightStatistic) -> np.ndarray | None:
    """The per-visit values of ``statistic`` cached in ``warps`` (``variance_meanclip`` over
    ``weight_key``, from :func:`coaddx.open_warps`), or None when they are not there."""
    key = statistic.key
    if "variance_meanclip" not in warps or key not in warps["weight_key"].values:
        return None
    return np.asarray(warps["variance_meanclip"].sel(weight_key=key).values, dtype=np.float64)
