"""The only dask wiring: kernels mapped over blocks, overlaps and reductions.

``stack`` (stacking subregions), ``interp`` (InterpImage over full rows), ``weights``
(per-visit weight statistics) and ``convolve`` (tiled spatially varying convolution).
"""

from coaddx.graph.convolve import convolve_regions
from coaddx.graph.interp import interpolate_rows
from coaddx.graph.stack import STACK_DTYPE, finish_coadd_mask, stack
from coaddx.graph.weights import visit_meanclip

__all__ = [
    "STACK_DTYPE",
    "convolve_regions",
    "finish_coadd_mask",
    "interpolate_rows",
    "stack",
    "visit_meanclip",
]
