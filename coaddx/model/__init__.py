"""The data model, no dask: exposures, mask planes, tract/patch geometry, WCS mappings and
every PSF model (analytic PSF images, the ModelPsfMatch double Gaussian, warped PSFs)."""
