"""Coadd assembly: AssembleCoadd (``assemble``) and CompareWarpAssembleCoadd
(``compare_warp.assemble_compare_warp``)."""
