"""Zarr stores, files only: ``layout`` (warp types, planes, codecs, patch-store attributes),
``warp_store`` (:class:`~coaddx.io.zarr.warp_store.WarpStore`: reserve, write, commit;
``check_store``, ``read_patch``), ``warps`` (``open_warps`` / ``write_warps`` of Datasets, with
the chunks and statistics they are given), ``coadd_store`` (``write_coadd``, ``open_coadd``)
and ``chunks`` (the direct chunk reader and writer)."""
