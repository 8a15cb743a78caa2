"""PSF-matching kernels of ip_diffim (algorithms.md 6.2-6.5), on numpy/scipy only.

:mod:`~coaddx.kernels.psfmatch.basis` the kernel bases and regularisation matrices (6.2),
:mod:`~coaddx.kernels.psfmatch.solve` the per-candidate and spatial normal equations (6.3,
6.4 step 4), :mod:`~coaddx.kernels.psfmatch.fit` the candidate-rejection loop of
``PsfMatchTask._solve`` (6.4) and :mod:`~coaddx.kernels.psfmatch.convolve` the spatially
varying convolution (6.4, 6.5).

Conventions
-----------
* Arrays are (row, column) = (y, x); positions, ``origin`` and ``bbox`` are (x, y).
* Kernels are odd-sized squares centred on ``(size // 2, size // 2)``. ``K ⊗ T`` is a true
  convolution, ``(K ⊗ T)[y, x] = Σ_{v,u} K[c+v, c+u] T[y-v, x-u]`` (``scipy.signal.convolve``),
  in the fit and in the convolution alike. afw's ``convolve`` is a correlation (the kernel is
  not flipped: ``Σ K[c+v, c+u] T[y+v, x+u]``), so a kernel fitted here is the 180°-rotated
  ``K[::-1, ::-1]`` of the one ip_diffim fits and applies; the two agree only for kernels
  symmetric under that rotation. The Alard-Lupton basis is closed under it (its odd polynomial
  terms change sign), so the fitted models and difference images are the same.
* ``bbox = (x0, y0, x1, y1)`` is the continuous range that the spatial functions map onto
  [-1, 1]; afw's ``Box2D(Box2I)`` of an image of width W starting at pixel 0 is
  ``(-0.5, -0.5, W - 0.5, H - 0.5)`` (see :func:`~coaddx.kernels.psfmatch.solve.bbox_from_shape`).
* Spatial terms follow afw ``PolynomialFunction2`` order (1, x, y, x², xy, y², ...);
  ``"chebyshev1"`` uses T_i(x')T_j(y') of the mapped coordinates, ``"polynomial"`` raw x^i y^j
  of the pixel coordinates, as in afw.
"""
