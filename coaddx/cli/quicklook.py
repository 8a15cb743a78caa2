"""Quick-look PNG of a coadd beside a comparison image (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.visualization import ZScaleInterval

__all__ = ["quicklook_png"]


def _stretch(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.arcsinh(10 * scaled) / np.arcsinh(10)


def quicklook_png(path: str | Path, images: dict[str, np.ndarray], *, title: str = "") -> Path:
    """Write side-by-side asinh-stretched panels with one shared zscale range (the first image's),
    so differences between panels are visible. matplotlib is imported here, on first use,
    so that ``coaddx --help`` does not load it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = np.asarray(next(iter(images.values())), dtype=np.float64)
    lo, hi = ZScaleInterval().get_limits(first[np.isfinite(first)])
    hi = lo + 4 * (hi - lo)  # show bright structure (streaks, stars) as well as the noise
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 5.4), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items(), strict=True):
        ax.imshow(
            _stretch(np.asarray(img, dtype=np.float64), lo, hi),
            origin="lower",
            cmap="gray",
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
