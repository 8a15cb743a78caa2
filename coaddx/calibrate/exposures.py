"""CalibrateTask over many exposures, one parallel task per exposure.

:func:`calibrate_exposures` reads every calexp's header (its WCS and shape) in the client and
gives each task only the reference stars near it, so a large catalogue is not shipped to every
worker. Each task reads its exposure, calibrates it (:func:`~coaddx.calibrate.calibrate`) and
writes ``OUT_DIR/<name>.fits`` (the calibrated exposure, coaddx calexp layout) after
``OUT_DIR/<name>.sources.fits`` (its source table), both atomically: an exposure whose
``<name>.fits`` exists is complete, and is skipped with ``reuse``. A task that fails reports
its error and the others finish.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.calibrate.calibrate import calibrate, reference_near
from coaddx.calibrate.config import CalibrateConfig
from coaddx.errors import CoaddxError, ConfigError, InputError
from coaddx.graph.warp import run_visit_tasks
from coaddx.io.catalog import read_reference_catalog, write_source_table
from coaddx.io.fits.exposure import read_exposure, write_exposure
from coaddx.model.catalog import ReferenceCatalog
from coaddx.warp.inputs import warp_inputs

__all__ = ["CalibrateResult", "calibrate_exposures", "output_paths"]

#: Extra margin (px) of the client's selection of reference stars beyond ``max_offset_pix``,
#: for the proper motions applied in the task.
SELECTION_MARGIN_PIX = 100.0


@dataclass(frozen=True)
class CalibrateResult:
    """What :func:`calibrate_exposures` did: the calibrated exposures written, those reused,
    the failures (input path -> error) and a summary row per exposure calibrated (``input``,
    ``output``, ``n_sources``, ``astrometry_rms_arcsec``, ``n_astrometry``,
    ``zero_point``, ``zero_point_err``, ``n_photometry``, ``seconds`` and the per-stage
    ``timings``)."""

    out_dir: Path
    written: tuple[Path, ...]
    reused: tuple[Path, ...]
    failed: dict[str, str] = field(default_factory=dict)
    summaries: tuple[dict[str, Any], ...] = ()


def output_paths(source: Path, out_dir: Path) -> tuple[Path, Path]:
    """(calibrated exposure, source table) paths of the input ``source`` under ``out_dir``."""
    stem = source.name
    for suffix in (".fz", ".gz", ".fits", ".fit", ".fts"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return out_dir / f"{stem}.fits", out_dir / f"{stem}.sources.fits"


def _calibrate_one(
    source: str, rows: np.ndarray, out_dir: str, config: CalibrateConfig, ref: ReferenceCatalog
) -> dict[str, Any]:
    """The task: read, calibrate against the ``rows`` of the shared ``ref``, write the source
    table then the exposure."""
    path = Path(source)
    t0 = time.perf_counter()
    try:
        exposure = read_exposure(path)
        t1 = time.perf_counter()
        cal = calibrate(exposure, ref.select(rows), config)
        t2 = time.perf_counter()
        out, table = output_paths(path, Path(out_dir))
        write_source_table(cal.sources, table)
        write_exposure(cal.exposure, out)
    except CoaddxError as exc:
        return {"input": source, "error": str(exc)}
    except Exception as exc:  # an unexpected failure of one exposure spares the others
        return {"input": source, "error": f"{type(exc).__name__}: {exc}"}
    astro, photo = cal.astrometry, cal.photometry
    return {
        "input": source,
        "output": str(out),
        "n_sources": len(cal.sources),
        "astrometry_rms_arcsec": astro.rms_arcsec if astro else float("nan"),
        "n_astrometry": astro.n_used if astro else 0,
        "zero_point": photo.zero_point if photo else float("nan"),
        "zero_point_err": photo.zero_point_err if photo else float("nan"),
        "n_photometry": photo.n_stars if photo else 0,
        "seconds": time.perf_counter() - t0,
        "timings": {
            "read": t1 - t0,
            **cal.timings,
            "write": time.perf_counter() - t2,
        },
    }


def _reference(reference_catalog: ReferenceCatalog | str | os.PathLike[str]) -> ReferenceCatalog:
    if isinstance(reference_catalog, ReferenceCatalog):
        return reference_catalog
    if isinstance(reference_catalog, str | os.PathLike):
        return read_reference_catalog(reference_catalog)
    raise InputError(
        "reference_catalog must be a path or a ReferenceCatalog "
        f"(coaddx.read_reference_catalog), got {type(reference_catalog).__name__}"
    )


def calibrate_exposures(
    paths: Iterable[str | os.PathLike[str]],
    reference_catalog: ReferenceCatalog | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: CalibrateConfig | None = None,
    reuse: bool = True,
    compute: Callable[..., Any] | None = None,
) -> CalibrateResult:
    """Calibrate every calexp of ``paths`` against the reference catalogue, one parallel task
    per exposure (see the module docstring).

    Parameters
    ----------
    paths : iterable of path
        Calexp files (any layout :func:`coaddx.read_exposure` reads); the names (less their
        FITS suffix) must differ, since the outputs are ``OUT_DIR/<name>.fits``.
    reference_catalog : ReferenceCatalog or path
        From :func:`coaddx.read_reference_catalog`, or a file it reads with its defaults.
    out_dir : path
        Folder for the calibrated exposures and source tables (created if absent).
    reuse : bool
        Skip exposures whose calibrated file exists; with False, an existing one is an error.
    compute : callable, optional
        Runs the tasks (``dask.compute`` by default; the CLI passes one with a progress bar).

    Returns
    -------
    CalibrateResult
    """
    config = config if config is not None else CalibrateConfig()
    if not isinstance(config, CalibrateConfig):
        raise ConfigError(f"config must be a CalibrateConfig, got {type(config).__name__}")
    sources = [Path(p) for p in paths]
    if not sources:
        raise InputError("calibrate_exposures: no exposures given")
    out_dir = Path(out_dir)
    outputs = {p: output_paths(p, out_dir)[0] for p in sources}
    clash = _duplicates(list(outputs.values()))
    if clash:
        raise InputError(
            f"calibrate_exposures: inputs would write the same output {clash[0]} "
            "(give each exposure a distinct file name)"
        )
    if any(p.resolve() == out.resolve() for p, out in outputs.items()):
        raise InputError(f"calibrate_exposures: OUT_DIR {out_dir} holds the inputs themselves")
    done = tuple(out for out in outputs.values() if out.exists())
    if done and not reuse:
        raise InputError(
            f"{len(done)} exposure(s) are already calibrated in {out_dir} (e.g. {done[0]}); "
            "use reuse=True to skip them"
        )
    ref = _reference(reference_catalog)
    todo = [p for p in sources if not outputs[p].exists()]
    margin = config.max_offset_pix + SELECTION_MARGIN_PIX
    arguments: list[list[Any]] = []
    near: list[np.ndarray] = []
    failed: dict[str, str] = {}
    for path in todo:
        try:
            (item,) = warp_inputs([path])  # the header only
        except CoaddxError as exc:
            failed[str(path)] = str(exc)
            continue
        near.append(reference_near(ref, item.wcs, item.shape, margin))
        arguments.append([item.name, None, str(out_dir), config])
    # The rows near any exposure go into the graph once; each task gets its row numbers.
    union = np.logical_or.reduce(near) if near else np.zeros(len(ref), bool)
    number = np.cumsum(union) - 1
    for args, rows in zip(arguments, near, strict=True):
        args[1] = number[rows].astype(np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_visit_tasks(_calibrate_one, arguments, compute, shared=(ref.select(union),))
    failed.update({r["input"]: r["error"] for r in results if "error" in r})
    good = tuple(r for r in results if "error" not in r)
    return CalibrateResult(out_dir, tuple(Path(r["output"]) for r in good), done, failed, good)


def _duplicates(paths: Sequence[Path]) -> list[Path]:
    names, counts = np.unique([str(p) for p in paths], return_counts=True)
    return [Path(n) for n in names[counts > 1]]
