"""Sky geometry: a tract (one TAN WCS around a centre) divided into patches (algorithms.md 5.5).

Pixel boxes are half-open ``[x0, x1) x [y0, y1)`` in 0-based tract pixels; a pixel centre sits
at integer coordinates (LSST convention). A patch has an *inner* box (the tiling) and an
*outer* box (inner grown by ``patch_border``, clipped to the tract); coadds are built on the
outer box, and a patch's WCS is the tract WCS with its origin moved to the outer box minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from coaddx.errors import ConfigError, InputError

__all__ = [
    "Box",
    "Patch",
    "Tract",
    "canonical_wcs",
    "make_tan_wcs",
    "shift_wcs",
    "wcs_from_header_string",
    "wcs_to_header_string",
]


@dataclass(frozen=True)
class Box:
    """A half-open integer pixel box ``[x0, x1) x [y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ConfigError(f"Box has negative size: {self}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``."""
        return (self.height, self.width)

    @property
    def empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def grow(self, by: int) -> Box:
        return Box(self.x0 - by, self.y0 - by, self.x1 + by, self.y1 + by)

    def shift(self, dx: int, dy: int) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def clip(self, other: Box) -> Box:
        """Intersection with ``other`` (an empty box at the corner when disjoint)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Box(x0, y0, max(x0, x1), max(y0, y1))

    def contains(self, other: Box) -> bool:
        return (
            self.x0 <= other.x0
            and self.y0 <= other.y0
            and other.x1 <= self.x1
            and other.y1 <= self.y1
        )

    def slices(self, origin: Box | None = None) -> tuple[slice, slice]:
        """``(rows, columns)`` slices of this box inside an array whose pixel (0, 0) is
        ``origin``'s minimum corner."""
        ox, oy = (origin.x0, origin.y0) if origin is not None else (0, 0)
        return (slice(self.y0 - oy, self.y1 - oy), slice(self.x0 - ox, self.x1 - ox))

    def to_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def make_tan_wcs(
    center: SkyCoord,
    crpix: tuple[float, float],
    pixel_scale: float,
    rotation: float = 0.0,
    projection: str = "TAN",
) -> WCS:
    """A celestial WCS with ``crpix`` given in 0-based pixels (x, y), scale in arcsec/pixel and
    rotation in degrees (skymap ``makeCdMatrix``: north up, east left for rotation 0)."""
    if not pixel_scale > 0:
        raise ConfigError(f"pixel_scale must be > 0 arcsec, got {pixel_scale}")
    scale = pixel_scale / 3600.0
    rot = math.radians(rotation)
    cd = scale * np.array([[-math.cos(rot), math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    icrs = center.icrs
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{projection}", f"DEC--{projection}"]
    w.wcs.crval = [icrs.ra.deg, icrs.dec.deg]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    w.wcs.cd = cd
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def shift_wcs(wcs: WCS, dx: float, dy: float) -> WCS:
    """The same WCS with its pixel origin moved to (dx, dy) of the old frame."""
    out = wcs.deepcopy()
    out.wcs.crpix = [wcs.wcs.crpix[0] - dx, wcs.wcs.crpix[1] - dy]
    out.wcs.set()
    return out


@dataclass(frozen=True)
class Tract:
    """A circular tract (DiscreteSkyMap style) tiled by patches.

    Parameters
    ----------
    center : SkyCoord or (ra, dec) in degrees
    radius : float
        Tract radius in degrees (the area that must be covered, before ``tract_overlap``).
    pixel_scale : float
        arcsec per pixel (LSST production maps use 0.2).
    patch_inner_dimensions : (int, int)
        Inner patch size (x, y) in pixels; LSST default (4000, 4000).
    patch_border : int
        Border added around the inner box to make the outer box; LSST default 100.
    tract_overlap : float
        Degrees added to ``radius`` (LSST default 1.0; set 0 for small test tracts).
    """

    center: SkyCoord
    radius: float = 0.1
    pixel_scale: float = 0.2
    patch_inner_dimensions: tuple[int, int] = (4000, 4000)
    patch_border: int = 100
    tract_overlap: float = 0.0
    rotation: float = 0.0
    tract_id: int = 0
    wcs: WCS = field(init=False, repr=False, compare=False)
    bbox: Box = field(init=False, compare=False)
    num_patches: tuple[int, int] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        center = self.center
        if not isinstance(center, SkyCoord):
            ra, dec = center
            center = SkyCoord(float(ra) * u.deg, float(dec) * u.deg, frame="icrs")
            object.__setattr__(self, "center", center)
        if not self.radius > 0:
            raise ConfigError(f"Tract.radius must be > 0 degrees, got {self.radius}")
        px, py = self.patch_inner_dimensions
        if px <= 0 or py <= 0:
            raise ConfigError(f"patch_inner_dimensions must be positive, got {(px, py)}")
        if self.patch_border < 0:
            raise ConfigError(f"patch_border must be >= 0, got {self.patch_border}")
        wcs0 = make_tan_wcs(center, (0.0, 0.0), self.pixel_scale, self.rotation)
        reach = (self.radius + self.tract_overlap) * u.deg
        pts = [center.directional_offset_by(b * u.deg, reach) for b in (0, 90, 180, 270)]
        xy = np.array([wcs0.world_to_pixel(p) for p in pts], dtype=float)
        x0, y0 = np.floor(xy.min(axis=0)).astype(int)
        x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 1
        nx, ny = math.ceil((x1 - x0) / px), math.ceil((y1 - y0) / py)
        x0 -= (nx * px - (x1 - x0)) // 2
        y0 -= (ny * py - (y1 - y0)) // 2
        object.__setattr__(self, "wcs", shift_wcs(wcs0, x0, y0))
        object.__setattr__(self, "bbox", Box(0, 0, nx * px, ny * py))
        object.__setattr__(self, "num_patches", (nx, ny))

    def patch(self, ix: int, iy: int) -> Patch:
        """Patch ``(ix, iy)``: inner box, outer box (border-grown, clipped to the tract), WCS."""
        nx, ny = self.num_patches
        if not (0 <= ix < nx and 0 <= iy < ny):
            raise ConfigError(f"patch index {(ix, iy)} outside the tract's {nx} x {ny} patches")
        px, py = self.patch_inner_dimensions
        inner = Box(ix * px, iy * py, (ix + 1) * px, (iy + 1) * py)
        outer = inner.grow(self.patch_border).clip(self.bbox)
        return Patch(
            outer_bbox=outer,
            inner_bbox=inner,
            tract_wcs=self.wcs,
            tract_id=self.tract_id,
            index=(ix, iy),
            sequential=nx * iy + ix,
        )

    def patches(self) -> list[Patch]:
        nx, ny = self.num_patches
        return [self.patch(ix, iy) for iy in range(ny) for ix in range(nx)]

    def find_patch(self, coord: SkyCoord) -> Patch:
        """The patch whose inner box holds ``coord``."""
        x, y = self.wcs.world_to_pixel(coord)
        ix = math.floor((float(x) + 0.5) / self.patch_inner_dimensions[0])
        iy = math.floor((float(y) + 0.5) / self.patch_inner_dimensions[1])
        return self.patch(ix, iy)


@dataclass(frozen=True)
class Patch:
    """A coadd grid: the outer box of a tract patch (or any WCS + shape via :meth:`from_wcs`)."""

    outer_bbox: Box
    inner_bbox: Box
    tract_wcs: WCS = field(repr=False, compare=False)
    tract_id: int = 0
    index: tuple[int, int] = (0, 0)
    sequential: int = 0

    def __post_init__(self) -> None:
        # The WCS as its FITS header gives it back: astropy pickles a WCS through its header
        # (13 significant digits, CD written as PC), so a patch sent to a dask worker or read
        # back from a store would otherwise differ from this one in the last bits and warp
        # 1e-12 px elsewhere (results then depended on the scheduler).
        object.__setattr__(self, "tract_wcs", canonical_wcs(self.tract_wcs))

    @classmethod
    def from_wcs(cls, wcs: WCS, shape: tuple[int, int]) -> Patch:
        """A grid given by a celestial WCS and a ``(rows, columns)`` shape, like a SWarp header."""
        if not getattr(wcs, "has_celestial", False):
            raise InputError("Patch.from_wcs needs a celestial WCS")
        ny, nx = (int(s) for s in shape)
        if nx <= 0 or ny <= 0:
            raise InputError(f"Patch.from_wcs: shape must be positive, got {shape}")
        box = Box(0, 0, nx, ny)
        return cls(outer_bbox=box, inner_bbox=box, tract_wcs=wcs.celestial)

    @property
    def shape(self) -> tuple[int, int]:
        return self.outer_bbox.shape

    @property
    def wcs(self) -> WCS:
        """WCS of the outer box: array pixel (0, 0) is the outer box minimum corner."""
        return shift_wcs(self.tract_wcs, self.outer_bbox.x0, self.outer_bbox.y0)

    @property
    def name(self) -> str:
        return f"{self.index[0]},{self.index[1]}"

    def wcs_header(self) -> str:
        """The patch WCS as a FITS header string (the store's ``wcs`` attribute)."""
        return wcs_to_header_string(self.wcs)

    @property
    def x(self) -> np.ndarray:
        """Tract pixel x coordinates of the outer box columns."""
        return np.arange(self.outer_bbox.x0, self.outer_bbox.x1, dtype=np.int64)

    @property
    def y(self) -> np.ndarray:
        return np.arange(self.outer_bbox.y0, self.outer_bbox.y1, dtype=np.int64)


def canonical_wcs(wcs: WCS) -> WCS:
    """``wcs`` as it comes back from its FITS header (idempotent: pickling, copying or storing
    the result gives it back bit for bit). A WCS with distortion lookup tables, which a header
    does not carry, is returned as it is."""
    if any(getattr(wcs, k, None) is not None for k in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
        return wcs
    return wcs_from_header_string(wcs_to_header_string(wcs))


def wcs_to_header_string(wcs: WCS) -> str:
    return wcs.to_header(relax=True).tostring(sep="\n")


def wcs_from_header_string(text: str) -> WCS:
    try:
        header = fits.Header.fromstring(text, sep="\n")
        return WCS(header)
    except Exception as exc:  # astropy raises a zoo of types here
        raise InputError(f"unreadable WCS header string: {exc}") from exc
