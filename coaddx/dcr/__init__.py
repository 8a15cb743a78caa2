"""DcrAssembleCoadd: chromatic sub-filter coadds from the DCR forward model (algorithms.md 4).

Built so far: ``config`` (:class:`~coaddx.dcr.config.DcrConfig`); the refraction model and the
sub-filter shifts are in :mod:`coaddx.model.refraction`, the gain and conditioning arithmetic in
:mod:`coaddx.kernels.dcr`. The assembly itself (issue 12) lands here next.
"""

from coaddx.dcr.config import DcrConfig

__all__ = ["DcrConfig"]
