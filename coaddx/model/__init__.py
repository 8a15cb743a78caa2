"""The data model, no dask: ``exposure`` (:class:`~coaddx.model.exposure.Exposure`), ``masks``
(mask planes: named bits), ``skymap`` (tract / patch boxes and WCS), ``geometry`` (pixel
mappings between WCSs, overlaps) and ``psf`` (the analytic PSF images and the ModelPsfMatch
double Gaussian)."""
