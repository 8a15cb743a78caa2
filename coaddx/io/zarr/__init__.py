"""Zarr stores, files only: ``layout`` (warp types, planes, codecs, patch-store attributes),
``warp_store`` (:class:`~coaddx.io.zarr.warp_store.WarpStore`: reserve, write, commit),
``planes`` (the planes a writer is given, checked and converted to the stored dtypes),
``integrity`` (``check_store``, ``read_patch``, what a store's metadata must agree on),
``manifest`` (the per-visit chunk CRC-32C manifests, checked as chunks are read), ``lock``
(one writer at a time), ``recovery`` (visits written but not committed by a driver that
died), ``warps`` (``open_warps`` / ``write_warps`` of Datasets, with the chunks and statistics
they are given), ``coadd_store`` (``write_coadd``, ``open_coadd``) and ``chunks`` (the direct
chunk reader and writer)."""
