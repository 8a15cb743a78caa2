"""PSF-matching kernels of ip_diffim (algorithms.md 6.2-6.5).

:mod:`~coaddx.kernels.psfmatch.basis` the kernel bases and regularisation matrices (6.2),
:mod:`~coaddx.kernels.psfmatch.solve` the per-candidate and spatial normal equations (6.3,
6.4 step 4), :mod:`~coaddx.kernels.psfmatch.stamps` (with the compiled
:mod:`~coaddx.kernels.psfmatch.design`) the candidates' normal equations and statistics a batch
of stamps at a time, :mod:`~coaddx.kernels.psfmatch.fit` the candidate-rejection loop of
``PsfMatchTask._solve`` (6.4) and :mod:`~coaddx.kernels.psfmatch.convolve` the spatially
varying convolution (6.4, 6.5).

Conventions
-----------
* Arrays are (row, column) = (y, x); positions, ``origin`` and ``bbox`` are (x, y).
* Kernels are odd-sized squares centred on ``(size // 2, size // 2)``, in afw's sense: afw's
  ``convolve`` is a correlation, ``(K ⋆ T)[y, x] = Σ_{v,u} K[c+v, c+u] T[y+v, x+u]`` (the kernel
  is not flipped; ``scipy.ndimage.correlate``), and the fit models the science stamp as
  ``Σ_j a_j (B_j ⋆ T)``. So the basis images, the coefficients (``SpatialKernel.coeffs``,
  ``coefficients``, ``CandidateSolution.coeffs``), ``SpatialKernel.kernel_image`` and the
  candidates' kernels are interchangeable with ip_diffim's, odd Alard-Lupton terms included.
  The convolution applies the same correlation, as a true convolution with the 180°-rotated
  term images of ``SpatialKernel.term_images`` (the one place that holds the rotation).
* The normal equations of an Alard-Lupton basis come from its separable form (a Gaussian times
  x^i y^j is a product of two 1-D filters: two 1-D passes per term), equal to the direct
  correlation up to round-off (tests/kernels/test_psfmatch_fast.py).
* ``bbox = (x0, y0, x1, y1)`` is the continuous range that the spatial functions map onto
  [-1, 1]; afw's ``Box2D(Box2I)`` of an image of width W starting at pixel 0 is
  ``(-0.5, -0.5, W - 0.5, H - 0.5)`` (see :func:`~coaddx.kernels.psfmatch.solve.bbox_from_shape`).
* Spatial terms follow afw ``PolynomialFunction2`` order (1, x, y, x², xy, y², ...);
  ``"chebyshev1"`` uses T_i(x')T_j(y') of the mapped coordinates, ``"polynomial"`` raw x^i y^j
  of the pixel coordinates, as in afw.
"""
