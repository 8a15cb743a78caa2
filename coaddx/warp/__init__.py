"""MakeDirectWarp / MakePsfMatchedWarp: warping exposures onto a patch (algorithms.md 1).

``make_warps`` (orchestration), ``inputs`` (exposures and their visit/detector ids),
``exposure`` (one exposure onto the patch), ``visit`` (one visit: composite, PSF-match, write),
``psf_matched`` (ModelPsfMatch), ``weights`` (the weight statistics cached per visit),
``store`` (``open_warps`` / ``write_warps`` with the step's defaults), ``config``.
"""
