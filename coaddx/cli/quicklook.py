"""Quick-look PNG of a coadd beside a comparison image (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.visualization import ZScaleInterval

__all__ = ["quicklook_png"]


def _stretch(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.arcsinh(10 * scaled) / np.arcsinh(10)


def quicklook_png(
    path: str | Path,
    images: dict[str, np.ndarray],
    *,
    title: str = "",
    maps: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write side-by-side asinh-stretched panels with one shared zscale range (the first image's),
    so differences between panels are visible; then each of ``maps`` (e.g. the mean epoch) in
    its own linear colour scale with a colour bar, NaN (no input) blank. matplotlib is
    imported here, on first use, so that ``coaddx --help`` does not load it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = np.asarray(next(iter(images.values())), dtype=np.float64)
    lo, hi = ZScaleInterval().get_limits(first[np.isfinite(first)])
    hi = lo + 4 * (hi - lo)  # show bright structure (streaks, stars) as well as the noise
    maps = maps or {}
    n = len(images) + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 5.4), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items(), strict=False):
        ax.imshow(
            _stretch(np.asarray(img, dtype=np.float64), lo, hi),
            origin="lower",
            cmap="gray",
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (name, values) in zip(axes[0][len(images) :], maps.items(), strict=True):
        data = np.asarray(values, dtype=np.float64)
        finite = data[np.isfinite(data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        shown = ax.imshow(
            data, origin="lower", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest"
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
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
