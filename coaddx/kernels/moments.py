"""Adaptive second moments of a PSF image (SdssShape-like): the PSF size ``sigma_psf`` that
footprints grow by in detection. Pure numpy."""

from __future__ import annotations

import numpy as np

__all__ = ["adaptive_sigma"]


def adaptive_sigma(psf: np.ndarray, *, iters: int = 200, tol: float = 1e-10) -> float:
    """Determinant radius ``det(M)**0.25`` of the adaptive (Gaussian-weighted, SdssShape-like)
    second moments ``M`` of a PSF image: the fixed point of M = 2 Cov(I W_M)."""
    img = np.asarray(psf, np.float64)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    total = img.sum()
    cy, cx = (img * yy).sum() / total, (img * xx).sum() / total
    dy, dx = yy - cy, xx - cx
    m = np.array([[1.0, 0.0], [0.0, 1.0]]) * max(1.0, img.shape[0] / 8.0) ** 2
    for _ in range(iters):
        inv = np.linalg.inv(m)
        w = img * np.exp(
            -0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)
        )
        sw = w.sum()
        new = (
            2.0
            * np.array(
                [
                    [(w * dx * dx).sum(), (w * dx * dy).sum()],
                    [(w * dx * dy).sum(), (w * dy * dy).sum()],
                ]
            )
            / sw
        )
        if np.abs(new - m).max() < tol:
            m = new
            break
        m = new
    return float(np.linalg.det(m) ** 0.25)
