"""CompareWarpAssembleCoadd: artifact rejection by comparing PSF-matched warps (algorithms.md 3).

``config`` (:class:`~coaddx.coadd.compare_warp.config.CompareWarpConfig` and its parts),
``inputs`` (checks and plans), ``stages`` (template, ScaleVariance, detection, filtering:
:func:`~coaddx.coadd.compare_warp.stages.compare_warp_stages`) and ``assemble`` (the step,
:func:`~coaddx.coadd.compare_warp.assemble.assemble_compare_warp`, and its final stack).
"""
