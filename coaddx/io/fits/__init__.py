"""Exposure FITS: ``exposure`` (the coaddx calexp layout, the LSST three-HDU layout, layout
detection, ``read_exposure`` / ``write_exposure`` / headers-only geometry), ``decam`` (the DECam
Community Pipeline InstCal layout and PSFEx PSFs) and ``util`` (shared header and layer
readers)."""
