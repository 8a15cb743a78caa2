"""Coadd assembly steps: AssembleCoadd (``assemble``, configured by ``config.AssembleConfig``),
CompareWarpAssembleCoadd (``compare_warp/``) and the per-visit weight statistics both use
(``weights``)."""
