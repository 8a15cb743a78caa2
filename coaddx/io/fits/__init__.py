"""Exposure FITS: the coaddx calexp layout, the LSST three-HDU layout and the DECam CP layout."""
