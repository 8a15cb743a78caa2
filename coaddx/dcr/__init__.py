"""DcrAssembleCoadd: chromatic sub-filter coadds from the DCR forward model (algorithms.md 4).

``config`` (:class:`~coaddx.dcr.config.DcrConfig`), ``inputs`` (checks, per-visit conditions
and shifts in the patch frame) and ``assemble`` (:func:`~coaddx.dcr.assemble.assemble_dcr`,
:func:`~coaddx.dcr.assemble.dcr_template`). The refraction model is in
:mod:`coaddx.model.refraction`, the array steps in :mod:`coaddx.kernels.dcr` and
:mod:`coaddx.kernels.dcr_tile`, the tiles on dask in :mod:`coaddx.graph.dcr`.
"""

from coaddx.dcr.assemble import assemble_dcr, dcr_template
from coaddx.dcr.config import DcrConfig

__all__ = ["DcrConfig", "assemble_dcr", "dcr_template"]
