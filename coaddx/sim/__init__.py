"""The simulator (support: never imported by the library's own layers): ``simulate`` (the entry
point and the stores it writes), ``scene`` (sources, visits, detectors, artifacts), ``visits``
(rendering one visit or calexp), ``truth`` (the truth tables) and ``render`` (numba renderers)."""
