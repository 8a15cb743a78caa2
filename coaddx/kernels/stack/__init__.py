"""Per-pixel stacking over the visit axis (afw statisticsStack).

:func:`stack_block` (``block.py``) stacks one (visit, y, x) block with the settings of a
:class:`StackOptions` (``options.py``); its compiled passes live by responsibility in
``mean.py`` (weighted mean), ``select.py`` + ``network.py`` (median and the clip window:
sorting network or selection), ``clip.py`` (the MEANCLIP passes), ``masks.py`` (mask
propagation) and ``scratch.py`` (the shared segment scratch). ``reduce.py`` splits the weighted
mean into ``mean_chunk`` / ``mean_combine`` / ``mean_finalize`` for reductions over visit chunks.
"""

from coaddx.kernels.stack.block import stack_block
from coaddx.kernels.stack.network import sorting_network
from coaddx.kernels.stack.options import ERROR_MODES, STATISTICS, StackOptions
from coaddx.kernels.stack.reduce import MeanSums, mean_chunk, mean_combine, mean_finalize

__all__ = [
    "ERROR_MODES",
    "STATISTICS",
    "MeanSums",
    "StackOptions",
    "mean_chunk",
    "mean_combine",
    "mean_finalize",
    "sorting_network",
    "stack_block",
]
