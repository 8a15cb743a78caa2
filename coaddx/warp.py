"""MakeDirectWarp: calexps onto a patch grid, written in parallel into the warp store.

``make_warps`` selects the exposures that overlap the patch (headers only), groups them by
visit, and builds one dask task per visit: read the visit's detectors, calibrate them to nJy,
warp each onto the patch with the afw Lanczos semantics (:mod:`coaddx.kernels.warp`), composite
them ("last good pixel wins", copyGoodPixels), and write the result into the visit's own
reserved slot of the store, so no two tasks write one object. Visits are committed in order
once their tasks finish; a visit that fails does not spoil the others.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .errors import CoaddxError, ConfigError, InputError, StoreError
from .exposure import Exposure, boundary_pixels
from .geometry import exposure_overlaps, source_coordinates, source_grid
from .io.fits import read_exposure, read_exposure_geometry
from .io.zarr import WarpStore
from .kernels.warp import KERNELS, warp_block, warp_on_grid
from .masks import bitmask, mask_planes, merge_mask_planes
from .psf import psf_image
from .skymap import Box, Patch, wcs_from_header_string, wcs_to_header_string

__all__ = [
    "WarpConfig",
    "WarpResult",
    "make_warps",
    "patch_from_store",
    "warp_exposure",
    "warp_exposure_box",
]


@dataclass(frozen=True, kw_only=True)
class WarpConfig:
    """MakeDirectWarp configuration (LSST defaults, algorithms.md 5.1-5.2).

    Parameters
    ----------
    kernel : {"lanczos3", "lanczos4", "bilinear", "nearest"}
        Warping kernel of image and variance (``warpingKernelName``).
    interp_length : int
        The pixel mapping is evaluated exactly every ``interp_length`` pixels and interpolated
        in between (``interpLength``); 0 or 1 evaluates it at every pixel.
    grow_full_mask_planes : tuple of str
        Planes spread over the full kernel footprint (``growFullMask`` = EDGE); other planes
        spread over the bilinear footprint.
    border : int
        Exposures are selected if they overlap the patch grown by this many pixels
        (MakeDirectWarp ``border``).
    calibrate : bool
        Multiply image by the exposure's nJy-per-count calibration and variance by its square.
    """

    kernel: str = "lanczos3"
    interp_length: int = 10
    grow_full_mask_planes: tuple[str, ...] = ("EDGE",)
    border: int = 256
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ConfigError(f"WarpConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not isinstance(self.interp_length, int) or self.interp_length < 0:
            raise ConfigError(
                f"WarpConfig.interp_length must be an integer >= 0, got {self.interp_length!r}"
            )
        if not isinstance(self.border, int) or self.border < 0:
            raise ConfigError(f"WarpConfig.border must be an integer >= 0, got {self.border!r}")
        object.__setattr__(self, "grow_full_mask_planes", tuple(self.grow_full_mask_planes))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grow_full_mask_planes"] = list(self.grow_full_mask_planes)
        return out


@dataclass(frozen=True)
class WarpResult:
    """What :func:`make_warps` did."""

    store: Path
    written: tuple[int, ...]
    reused: tuple[int, ...]
    not_overlapping: tuple[str, ...]
    failed: dict[int, str] = field(default_factory=dict)


# -- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """One exposure to warp: a path (read in the task) or an in-memory Exposure."""

    source: Path | Exposure
    visit: int
    detector: int
    wcs: WCS = field(repr=False)
    shape: tuple[int, int]

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, Path) else self.source.where


def _header_ids(path: Path) -> tuple[int, int]:
    """Visit and detector ids from the primary header (coaddx/LSST: VISIT, DETECTOR; DECam CP:
    EXPNUM, CCDNUM)."""
    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable FITS file ({exc})") from exc
    visit = header.get("VISIT", header.get("EXPNUM"))
    if visit is None:
        try:
            visit = fits.getheader(path, 1).get("EXPNUM")
        except (OSError, ValueError, IndexError):
            visit = None
    if visit is None:
        raise InputError(f"{path}: no VISIT or EXPNUM keyword to tell which visit it belongs to")
    detector = header.get("DETECTOR", header.get("CCDNUM", 0))
    return int(visit), int(detector)


def _inputs(exposures: Iterable[str | os.PathLike[str] | Exposure]) -> list[_Input]:
    out = []
    for item in exposures:
        if isinstance(item, Exposure):
            out.append(_Input(item, int(item.visit), int(item.detector), item.wcs, item.shape))
            continue
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such exposure file")
        wcs, shape = read_exposure_geometry(path)
        visit, detector = _header_ids(path)
        out.append(_Input(path, visit, detector, wcs, shape))
    if not out:
        raise InputError("make_warps: no exposures given")
    return out


def _crc_file(path: Path) -> str:
    crc = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


# -- one exposure ----------------------------------------------------------------------------


def _dest_box(exp_wcs: WCS, exp_shape: tuple[int, int], patch: Patch, pad: int) -> Box | None:
    """The patch-array box covered by the exposure (its boundary mapped to the patch), grown by
    the kernel half-width and clipped to the patch; None if it misses."""
    x, y = boundary_pixels(exp_shape, 16)
    world = exp_wcs.pixel_to_world_values(x, y)
    px, py = patch.wcs.world_to_pixel_values(*world)
    ny, nx = patch.shape
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        return Box(0, 0, nx, ny)
    box = Box(
        int(np.floor(px.min())) - pad,
        int(np.floor(py.min())) - pad,
        int(np.ceil(px.max())) + pad + 1,
        int(np.ceil(py.max())) + pad + 1,
    )
    box = box.clip(Box(0, 0, nx, ny))
    return None if box.empty else box


def _calibrated_planes(exp: Exposure) -> tuple[np.ndarray, np.ndarray]:
    """Image and variance in nJy (as :meth:`Exposure.calibrated`, without copying the rest)."""
    c = float(exp.photo_calib)
    if c == 1.0:
        return exp.image, exp.variance
    image = np.multiply(exp.image, c, dtype=np.float64).astype(np.float32)
    variance = np.multiply(exp.variance, c * c, dtype=np.float64).astype(np.float32)
    return image, variance


def warp_exposure_box(
    exposure: Exposure,
    patch: Patch,
    config: WarpConfig | None = None,
    planes: dict[str, int] | None = None,
) -> tuple[Box, np.ndarray, np.ndarray, np.ndarray] | None:
    """Warp one exposure onto the part of the patch it can reach: ``(box, image, variance,
    mask)`` with arrays of ``box.shape`` (patch-array box), NaN / NaN / NO_DATA where the
    kernel leaves the exposure; None if the exposure misses the patch."""
    config = config or WarpConfig()
    planes = planes or merge_mask_planes(mask_planes(), exposure.mask_planes)
    no_data_bit = bitmask(planes, "NO_DATA")
    if config.calibrate:
        src_image, src_variance = _calibrated_planes(exposure)
    else:
        src_image, src_variance = exposure.image, exposure.variance
    mask = _remap_mask(exposure.mask, exposure.mask_planes, planes, exposure.where)
    missing = ~(np.isfinite(src_image) & np.isfinite(src_variance))
    if missing.any():  # NaNs would spread over the whole Lanczos footprint: mark and zero them
        src_image = np.where(missing, np.float32(0), src_image)
        src_variance = np.where(missing, np.float32(0), src_variance)
        mask = mask | np.where(missing, np.int32(no_data_bit), np.int32(0))
    box = _dest_box(exposure.wcs, exposure.shape, patch, pad=5)
    if box is None:
        return None
    grow = bitmask(planes, config.grow_full_mask_planes, strict=False)
    if config.interp_length > 1:  # the mapping is interpolated inside the kernel loop
        node_x, node_y, nodes_x, nodes_y = source_grid(
            patch.wcs,
            exposure.wcs,
            box.shape,
            interp_length=config.interp_length,
            origin=(box.x0, box.y0),
        )
        img, var, msk = warp_on_grid(
            src_image,
            src_variance,
            mask,
            node_x,
            node_y,
            nodes_x,
            nodes_y,
            box.shape,
            kernel=config.kernel,
            grow_full_bits=grow,
            no_data_bit=no_data_bit,
        )
    else:
        sx, sy, area = source_coordinates(
            patch.wcs,
            exposure.wcs,
            box.shape,
            interp_length=config.interp_length,
            origin=(box.x0, box.y0),
        )
        img, var, msk = warp_block(
            src_image,
            src_variance,
            mask,
            sx,
            sy,
            area,
            kernel=config.kernel,
            grow_full_bits=grow,
            no_data_bit=no_data_bit,
        )
    no_data = (msk & no_data_bit) != 0
    img[no_data] = np.nan
    var[no_data] = np.nan
    return box, img, var, msk


def warp_exposure(
    exposure: Exposure,
    patch: Patch,
    config: WarpConfig | None = None,
    planes: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp one exposure onto the patch grid: (image nJy, variance nJy², mask) over the whole
    patch, NaN / NaN / NO_DATA where the exposure does not reach."""
    config = config or WarpConfig()
    planes = planes or merge_mask_planes(mask_planes(), exposure.mask_planes)
    image, variance, out_mask = _blank(patch.shape, bitmask(planes, "NO_DATA"))
    warped = warp_exposure_box(exposure, patch, config, planes)
    if warped is not None:
        box, img, var, msk = warped
        rows, cols = box.slices()
        image[rows, cols], variance[rows, cols], out_mask[rows, cols] = img, var, msk
    return image, variance, out_mask


def warped_psf(exposure: Exposure, patch: Patch, size: int | None = None) -> np.ndarray:
    """The exposure's PSF in the patch frame (WarpedPsf at the exposure centre): the PSF image
    resampled (Lanczos-3) through the local linear pixel mapping, unit sum. Exposures without a
    PSF image get a circular Moffat (beta 3) of their ``psf_fwhm``."""
    psf = exposure.psf
    if psf is None:
        if not np.isfinite(exposure.psf_fwhm):
            raise InputError(f"{exposure.where}: no PSF image and no psf_fwhm to build one")
        psf = psf_image(float(exposure.psf_fwhm), "moffat")
    ny, nx = exposure.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    px, py = patch.wcs.world_to_pixel_values(*exposure.wcs.pixel_to_world_values(cx, cy))
    step = 1.0
    pts = np.array([[px, py], [px + step, py], [px, py + step]])
    sx, sy = exposure.wcs.world_to_pixel_values(
        *patch.wcs.pixel_to_world_values(pts[:, 0], pts[:, 1])
    )
    jac = np.array([[sx[1] - sx[0], sx[2] - sx[0]], [sy[1] - sy[0], sy[2] - sy[0]]]) / step
    n = size or psf.shape[0]
    h, c = n // 2, psf.shape[0] // 2
    dy, dx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    src_x = c + jac[0, 0] * dx + jac[0, 1] * dy
    src_y = c + jac[1, 0] * dx + jac[1, 1] * dy
    area = np.full(src_x.shape, abs(np.linalg.det(jac)))
    pad = np.pad(psf.astype(np.float32), 4)
    img, _, _ = warp_block(
        pad,
        np.zeros_like(pad),
        np.zeros(pad.shape, np.int32),
        src_x + 4,
        src_y + 4,
        area,
        kernel="lanczos3",
    )
    img = np.nan_to_num(img.astype(np.float64))
    return img / img.sum()


def psf_match_warp(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: np.ndarray,
    planes: dict[str, int],
    config: Any = None,
    region: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ModelPsfMatch a warp: convolve it with the kernel that turns ``psf`` into the model PSF
    (each local kernel normalised to unit sum). NO_DATA grows inward by the kernel half-width
    wherever the footprint leaves the data (chip gaps and edges); variance is sum K^2 var."""
    from .graph import convolve_regions
    from .psfmatch import model_matching_kernel

    kernel = model_matching_kernel(psf, config)
    no_data = bitmask(planes, "NO_DATA")
    img, var, msk = convolve_regions(
        image, variance, mask, kernel, region=region, no_data=no_data, normalize=True
    )
    gone = (msk & no_data) != 0
    img[gone] = np.nan
    var[gone] = np.nan
    return img, var, msk


def _remap_mask(
    mask: np.ndarray, have: dict[str, int], want: dict[str, int], where: str
) -> np.ndarray:
    """Re-express a mask in another plane dictionary (by name)."""
    if all(want.get(name) == bit for name, bit in have.items()):
        return mask
    out = np.zeros_like(mask)
    for name, bit in have.items():
        if name not in want:
            raise InputError(f"{where}: mask plane {name!r} is unknown to the warp store")
        out[(mask & (1 << bit)) != 0] |= 1 << want[name]
    return out


# -- one visit -------------------------------------------------------------------------------

_META_FIELDS = ("band", "mjd", "exptime", "airmass", "parallactic_angle", "psf_fwhm")


def _visit_metadata(exposures: Sequence[Exposure], items: Sequence[_Input]) -> dict[str, Any]:
    first = exposures[0]
    meta: dict[str, Any] = {k: getattr(first, k) for k in _META_FIELDS}
    meta["photo_calib"] = float(first.photo_calib)
    fwhm = [e.psf_fwhm for e in exposures if np.isfinite(e.psf_fwhm)]
    meta["psf_fwhm"] = float(np.mean(fwhm)) if fwhm else float("nan")
    meta["detectors"] = ",".join(str(e.detector) for e in exposures)
    meta["inputs"] = [
        {"path": str(i.source), "crc32": _crc_file(i.source)}
        if isinstance(i.source, Path)
        else {"path": i.name}
        for i in items
    ]
    return {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in meta.items()
    }


def _blank(shape: tuple[int, int], no_data: int) -> list[np.ndarray]:
    return [
        np.full(shape, np.nan, np.float32),
        np.full(shape, np.nan, np.float32),
        np.full(shape, no_data, np.int32),
    ]


def _copy_good(dest: list[np.ndarray], src: Sequence[np.ndarray], no_data: int) -> None:
    good = (src[2] & no_data) == 0  # copyGoodPixels: later detectors overwrite overlaps
    for d, s in zip(dest, src, strict=True):
        d[good] = s[good]


def _warp_visit(
    items: Sequence[_Input],
    patch: Patch,
    config: WarpConfig,
    store_path: str,
    slots: dict[str, int],
    psf_config: Any = None,
) -> dict[str, Any]:
    """Task body: read, calibrate, warp and composite one visit (and PSF-match each detector's
    warp when a psf_matched slot is given); write the visit's slots."""
    visit = items[0].visit
    try:
        stores = {t: WarpStore(store_path, t) for t in slots}
        planes = stores["direct"].mask_planes
        no_data = bitmask(planes, "NO_DATA")
        exposures = [
            i.source if isinstance(i.source, Exposure) else read_exposure(i.source) for i in items
        ]
        pairs = [(e, warp_exposure_box(e, patch, config, planes)) for e in exposures]
        pairs = [(e, w) for e, w in pairs if w is not None]
        warped = [w for _, w in pairs]
        if not warped:
            return {"visit": visit, "error": "no pixel of the visit lands on the patch"}
        union = Box(
            min(w[0].x0 for w in warped),
            min(w[0].y0 for w in warped),
            max(w[0].x1 for w in warped),
            max(w[0].y1 for w in warped),
        )
        if len(warped) == 1:  # one detector: its box is the visit's data
            direct = warped[0][1:]
        else:  # copyGoodPixels, in detector order, into a blank of the union box
            direct = _blank(union.shape, no_data)
            for box, *arrays in warped:
                rows, cols = box.slices(origin=union)
                _copy_good([p[rows, cols] for p in direct], arrays, no_data)
        if not np.isfinite(direct[0]).any():
            return {"visit": visit, "error": "no pixel of the visit lands on the patch"}
        meta = _visit_metadata(exposures, items)
        records = {
            "direct": {
                "visit": visit,
                **meta,
                **stores["direct"].write_slot_box(slots["direct"], union.x0, union.y0, *direct),
            }
        }
        if "psf_matched" in slots:
            matched_out = _blank(patch.shape, no_data)
            for exp, (box, *arrays) in pairs:
                full = _blank(patch.shape, no_data)
                rows, cols = box.slices()
                for d, arr in zip(full, arrays, strict=True):
                    d[rows, cols] = arr
                matched = psf_match_warp(*full, warped_psf(exp, patch), planes, psf_config)
                _copy_good(matched_out, matched, no_data)
            records["psf_matched"] = {
                "visit": visit,
                **meta,
                **stores["psf_matched"].write_slot(
                    slots["psf_matched"], *matched_out, data_region=union.slices()
                ),
            }
        return {"visit": visit, "records": records}
    except Exception as exc:  # a failed visit must not spoil the others: report it instead
        kind = "" if isinstance(exc, CoaddxError) else f"{type(exc).__name__}: "
        return {"visit": visit, "error": f"{kind}{exc}"}


# -- the step ----------------------------------------------------------------------------------


def patch_from_store(path: str | os.PathLike[str], warp_type: str = "direct") -> Patch:
    """The patch grid of an existing warp store (its tract WCS and x/y coordinates)."""
    import zarr

    try:
        group = zarr.open_group(str(Path(path) / warp_type), mode="r")
    except Exception as exc:
        raise StoreError(f"no {warp_type!r} warps at {path}: {exc}") from exc
    wcs = group.attrs.get("wcs")
    if not wcs:
        raise StoreError(f"{path}/{warp_type} has no WCS; give the patch explicitly")
    x, y = group["x"][:], group["y"][:]
    box = Box(int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1)
    inner = tuple(group.attrs.get("inner_bbox") or box.to_list())
    return Patch(
        outer_bbox=box,
        inner_bbox=Box(*inner),
        tract_wcs=wcs_from_header_string(wcs),
        tract_id=int(group.attrs.get("tract", 0) or 0),
    )


def _open_store(
    store: Path, patch: Patch, planes: dict[str, int], warp_type: str, psf_config: Any = None
) -> WarpStore:
    if (store / warp_type / "zarr.json").exists():
        ws = WarpStore(store, warp_type)
        have = tuple(ws.group["image"].shape[1:])
        if have != patch.shape:
            raise StoreError(
                f"{store}/{warp_type} holds {have[0]} x {have[1]} warps, the patch "
                f"is {patch.shape[0]} x {patch.shape[1]}"
            )
        return ws
    return WarpStore.create(
        store,
        warp_type=warp_type,
        shape=patch.shape,
        mask_planes=planes,
        wcs=wcs_to_header_string(patch.tract_wcs),
        x=patch.x,
        y=patch.y,
        attrs={
            "tract": patch.tract_id,
            "patch": patch.name,
            "bbox": patch.outer_bbox.to_list(),
            "inner_bbox": patch.inner_bbox.to_list(),
            "bunit": "nJy",
            **(
                {"model_psf_fwhm": psf_config.model_psf_fwhm}
                if warp_type == "psf_matched" and psf_config is not None
                else {}
            ),
        },
    )


def make_warps(
    exposures: Iterable[str | os.PathLike[str] | Exposure],
    patch: Patch,
    store: str | os.PathLike[str],
    *,
    config: WarpConfig | None = None,
    reuse: bool = True,
    warp_types: Sequence[str] = ("direct",),
    psf_config: Any = None,
    compute: Callable[..., Any] | None = None,
) -> WarpResult:
    """Warp every exposure that overlaps ``patch`` into the warp store, one task per visit.

    Parameters
    ----------
    exposures : iterable of paths or :class:`Exposure`
        Calexp files (any layout :func:`coaddx.read_exposure` reads) or Exposures; several
        detectors of one visit are composited.
    patch : Patch
        A tract patch, or any grid from :meth:`Patch.from_wcs`.
    store : path
        The patch warp store (created if absent).
    reuse : bool
        Skip visits already committed in the store and rewrite visits whose writing was
        interrupted; with False, a visit already in the store is an error.
    warp_types : sequence of {"direct", "psf_matched"}
        With "psf_matched", each detector's warp is also matched to the model PSF
        (ModelPsfMatch, :class:`coaddx.psfmatch.ModelPsfMatchConfig`, 7.7 px double Gaussian)
        and written to the ``psf_matched`` group in the same task.
    compute : callable, optional
        Runs the tasks (``dask.compute`` by default; the CLI passes one with a progress bar).

    Returns
    -------
    WarpResult
    """
    config = config or WarpConfig()
    if not isinstance(patch, Patch):
        raise ConfigError(f"patch must be a coaddx.Patch, got {type(patch).__name__}")
    store = Path(store)
    items = _inputs(exposures)
    selected = [
        i
        for i in items
        if exposure_overlaps(i.wcs, i.shape, patch.wcs, patch.shape, border=config.border)
    ]
    missing = tuple(i.name for i in items if i not in selected)
    planes = mask_planes()
    for i in selected:
        if isinstance(i.source, Exposure):
            planes = merge_mask_planes(planes, i.source.mask_planes)
    types = tuple(dict.fromkeys(warp_types))
    if not types or types[0] != "direct" or not set(types) <= {"direct", "psf_matched"}:
        raise ConfigError(
            f"warp_types must start with 'direct' and may add 'psf_matched', got "
            f"{tuple(warp_types)}"
        )
    from .psfmatch import ModelPsfMatchConfig

    psf_config = psf_config or ModelPsfMatchConfig()
    stores = {t: _open_store(store, patch, planes, t, psf_config) for t in types}
    by_visit: dict[int, list[_Input]] = {}
    for i in sorted(selected, key=lambda i: (i.visit, i.detector)):
        by_visit.setdefault(i.visit, []).append(i)
    done = {t: {int(r["visit"]) for r in ws.visits} for t, ws in stores.items()}
    complete = set.intersection(*done.values())
    if complete & set(by_visit) and not reuse:
        raise StoreError(
            f"visit(s) {sorted(complete & set(by_visit))} are already in {store}; "
            "use reuse=True to skip them"
        )
    todo = {t: [v for v in by_visit if v not in done[t]] for t in types}
    visits = sorted(set().union(*todo.values()))
    slots = {t: (stores[t].reserve(todo[t]) if todo[t] else {}) for t in types}
    tasks = [
        dask.delayed(_warp_visit, pure=False)(
            by_visit[v],
            patch,
            config,
            str(store),
            {t: slots[t][v] for t in types if v in slots[t]},
            psf_config,
        )
        for v in visits
    ]
    results = list((compute or dask.compute)(*tasks)) if tasks else []
    failed = {int(r["visit"]): r["error"] for r in results if "error" in r}
    for t in types:
        good = [r["records"][t] for r in results if "records" in r and t in r["records"]]
        _commit_in_order(stores[t], good, slots[t])
        stores[t].add_provenance(
            {
                "operation": "make_warps",
                "config": config.to_dict(),
                "visits": [int(r["visit"]) for r in good],
                "failed": failed,
            }
        )
    written = tuple(int(r["visit"]) for r in results if "records" in r)
    return WarpResult(store, written, tuple(sorted(complete & set(by_visit))), missing, failed)


def _commit_in_order(ws: WarpStore, good: list[dict[str, Any]], slots: dict[int, int]) -> None:
    """Commit the successful visits. Slots must be committed in order, so if a visit failed
    the visits after its slot are moved down: their slots are rewritten from the store."""
    order = sorted(good, key=lambda r: slots[int(r["visit"])])
    start = len(ws.visits)
    for k, record in enumerate(order):
        want, have = start + k, slots[int(record["visit"])]
        if want != have:  # close the gap left by a failed visit
            for name in ("image", "variance", "mask"):
                ws.group[name][want] = ws.group[name][have]
    if order:
        pending = [{"visit": int(r["visit"]), "index": start + k} for k, r in enumerate(order)]
        ws.group.attrs["pending"] = pending
        ws.commit(order)
    n = start + len(order)
    for name in ("image", "variance", "mask"):
        arr = ws.group[name]
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))
    ws.group.attrs["pending"] = []
