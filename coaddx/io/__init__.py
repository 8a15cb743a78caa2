"""Files only: exposure FITS (``fits/``: one module per layout), the Zarr warp and coadd stores
(``zarr/``: atomic writes, commit records, checksums, provenance), LSST-style FITS export of a
coadd (``export``) and the warp Dataset schema (``schema``). No science and no planning: what a
store caches is computed by a step and handed in (an import-linter contract checks it)."""
