"""The candidate loop of ip_diffim's PSF matching (algorithms.md 6.4): ``PsfMatchTask._solve``.

Candidates are rated and binned in spatial cells; single kernels are fitted and clipped, kernel
sums clipped (MEANCLIP/STDEVCLIP), an optional PCA basis built, the spatial kernel fitted
(:mod:`coaddx.kernels.psfmatch.solve`) and assessed at every candidate, until nothing is
rejected. :class:`FitOptions` holds the loop's settings; conventions in
:mod:`coaddx.kernels.psfmatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from coaddx.kernels.psfmatch.basis import renormalize_basis
from coaddx.kernels.psfmatch.solve import (
    CandidateSolution,
    SpatialKernel,
    T_Model,
    candidate_diffim_stats,
    mean_rms,
    solve_candidate,
    solve_spatial,
)
from coaddx.kernels.stats import meanclip_mean_std

__all__ = ["CandidateStamp", "FitInfo", "FitOptions", "fit_psf_matching_kernel"]


@dataclass(frozen=True, eq=False)
class CandidateStamp:
    """A kernel candidate: template and science stamps centred on a star at parent (x, y).

    ``rating`` ranks candidates within a cell (highest first); None means LSST's
    KernelCandidate rating, the mean S/N of the science stamp's central (2r+1)² box.
    """

    x: float
    y: float
    template: np.ndarray
    science: np.ndarray
    variance_template: np.ndarray
    variance_science: np.ndarray
    mask_template: np.ndarray | None = None
    mask_science: np.ndarray | None = None
    rating: float | None = None


@dataclass(frozen=True, eq=False)
class FitInfo:
    """Outcome of :func:`fit_psf_matching_kernel`.

    ``status`` per stamp: "good" (used by the final spatial fit), "bad" (rejected) or "unused"
    (never visited: beyond ``n_star_per_cell`` good candidates of its cell). ``solutions``: the
    most recent single-kernel solution per stamp (None if never built).
    """

    status: tuple[str, ...]
    solutions: tuple[CandidateSolution | None, ...]
    basis: np.ndarray
    n_iterations: int
    n_restarts: int
    ksum_mean: float
    ksum_std: float
    converged: bool
    n_used: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FitOptions:
    """Settings of :func:`fit_psf_matching_kernel` (LSST PsfMatchConfig defaults).

    Spatial model: ``spatial_order``/``bg_order`` of the kernel and background terms in
    ``model`` functions over the bbox, ``fit_background``; ``constant_first_term`` None means
    True unless the basis is the delta-function basis without PCA (LSST: AL or PCA).
    Candidates: binned in ``cell_size`` (x, y) cells, the first ``n_star_per_cell`` (-1: all)
    non-rejected of each visited. Clipping: single kernels by |mean z| > ``residual_mean_max``
    or rms z > ``residual_std_max`` (over the central (2·``core_radius``+1)² box when
    ``use_core_stats``), kernel sums beyond ``max_ksum_sigma`` clipped sigmas, the spatial
    kernel's residuals like single kernels; each switched by its ``*_clipping`` flag; at most
    ``max_spatial_iterations`` spatial fits. Pixels with a ``bad_bits`` bit are skipped in the
    statistics. Weights: ``constant_variance`` (the median variance) or per pixel; ``lam`` the
    regularisation strength (with a regularisation matrix); ``max_condition_number`` (None:
    none) rejects candidates with a worse-conditioned M. PCA: ``use_pca``, ``n_pca``
    components, ``subtract_mean_for_pca``.
    """

    spatial_order: int = 2
    bg_order: int = 1
    model: T_Model = "chebyshev1"
    fit_background: bool = False
    constant_first_term: bool | None = None
    cell_size: tuple[int, int] = (128, 128)
    n_star_per_cell: int = 5
    max_spatial_iterations: int = 3
    single_kernel_clipping: bool = True
    kernel_sum_clipping: bool = True
    spatial_kernel_clipping: bool = True
    max_ksum_sigma: float = 3.0
    residual_mean_max: float = 0.25
    residual_std_max: float = 1.5
    use_core_stats: bool = False
    core_radius: int = 3
    bad_bits: int = 0
    constant_variance: bool = True
    lam: float = 0.2
    max_condition_number: float | None = None
    use_pca: bool = False
    n_pca: int = 5
    subtract_mean_for_pca: bool = True

    def __post_init__(self) -> None:
        if (
            self.max_spatial_iterations < 1
            or self.n_star_per_cell == 0
            or self.n_star_per_cell < -1
        ):
            raise ValueError("max_spatial_iterations must be >= 1 and n_star_per_cell >= 1 or -1")


class _Loop:
    """Mutable candidate bookkeeping of the 6.4 loop (SpatialCellSet + visitors)."""

    UNKNOWN, GOOD, BAD = 0, 1, 2

    def __init__(self, stamps, cells, opts: FitOptions, regularization: np.ndarray | None):
        self.stamps, self.cells, self.opts = stamps, cells, opts
        self.n_per_cell, self.regularization = opts.n_star_per_cell, regularization
        self.core_radius = opts.core_radius if opts.use_core_stats else None
        self.status = np.zeros(len(stamps), np.int8)
        self.orig: list[CandidateSolution | None] = [None] * len(stamps)
        self.recent: list[CandidateSolution | None] = [None] * len(stamps)
        self.rejections = {"single": 0, "kernel_sum": 0, "pca": 0, "spatial": 0}

    def visited(self) -> np.ndarray:
        """The first ``n_per_cell`` non-BAD candidates of every cell (rating order)."""
        out = []
        for cell in self.cells:
            ok = cell[self.status[cell] != self.BAD]
            out.extend(ok if self.n_per_cell < 0 else ok[: self.n_per_cell])
        return np.array(sorted(out), dtype=np.intp)

    def _fit(self, i: int, basis: np.ndarray, regularize: bool) -> CandidateSolution | None:
        st, o = self.stamps[i], self.opts
        try:
            sol = solve_candidate(
                st.template,
                st.science,
                st.variance_template,
                st.variance_science,
                basis,
                fit_background=o.fit_background,
                constant_variance=o.constant_variance,
                regularization=self.regularization if regularize else None,
                lam=o.lam,
            )
        except (ValueError, np.linalg.LinAlgError):
            return None
        if o.max_condition_number is not None and sol.condition_number() > o.max_condition_number:
            return None
        mean, rms = self.stats(i, sol.kernel, sol.background)
        return replace(sol, mean_z=mean, rms_z=rms)

    def stats(self, i: int, kernel: np.ndarray, background: float) -> tuple[float, float]:
        st = self.stamps[i]
        return candidate_diffim_stats(
            st.template,
            st.science,
            st.variance_template,
            st.variance_science,
            st.mask_template,
            st.mask_science,
            kernel,
            background,
            bad_bits=self.opts.bad_bits,
            core_radius=self.core_radius,
        )

    def _judge(self, mean: float, rms: float, clip: bool) -> bool:
        if not (math.isfinite(mean) and math.isfinite(rms)):
            return False
        o = self.opts
        return not clip or (abs(mean) <= o.residual_mean_max and rms <= o.residual_std_max)

    def build_single(
        self, basis: np.ndarray, *, rebuild: bool = False, reason: str = "single"
    ) -> int:
        """BuildSingleKernelVisitor over the visited candidates; returns the number rejected."""
        n_rej = 0
        for i in self.visited():
            if (self.recent[i] is not None) != rebuild:  # rebuild: only already-built ones
                continue
            sol = self._fit(i, basis, regularize=not rebuild)
            if sol is not None:
                self.recent[i] = sol
                if self.orig[i] is None:
                    self.orig[i] = sol
            if sol is None or not self._judge(
                sol.mean_z, sol.rms_z, self.opts.single_kernel_clipping
            ):
                self.status[i], n_rej = self.BAD, n_rej + 1
            else:
                self.status[i] = self.GOOD
        self.rejections[reason] += n_rej
        return n_rej

    def clip_kernel_sum(self, max_sigma: float, clip: bool) -> tuple[float, float, int]:
        """KernelSumVisitor: MEANCLIP/STDEVCLIP of the kernel sums, reject beyond max_sigma·s."""
        idx = self.visited()
        if idx.size == 0:
            reasons = ", ".join(f"{k} {v}" for k, v in self.rejections.items() if v)
            raise ValueError(
                f"no usable kernel candidates: all {len(self.stamps)} stamps were "
                f"rejected (rejections: {reasons or 'none'})"
            )
        ksum = np.array([self.recent[i].kernel_sum for i in idx])
        mean, std = meanclip_mean_std(ksum, sigma_clip=3.0, clip_iter=3)
        # the 1e-12 relative floor only matters for identical kernel sums (std ~ round-off)
        limit = max(max_sigma * std, 1e-12 * abs(mean))
        reject = idx[np.abs(ksum - mean) > limit] if clip else idx[:0]
        self.status[reject] = self.BAD
        self.rejections["kernel_sum"] += reject.size
        return mean, std, reject.size

    def pca_basis(self, n_pca: int, subtract_mean: bool) -> tuple[np.ndarray, int]:
        """PCA of the visited candidates' original kernels, renormalised; refit them all."""
        idx = [i for i in self.visited() if self.orig[i] is not None]
        if not idx:
            raise ValueError("no usable kernel candidates remain for the PCA basis")
        kern = np.stack([self.orig[i].kernel for i in idx])
        basis = _pca_basis(kern, n_pca, subtract_mean)
        return basis, self.build_single(basis, rebuild=True, reason="pca")

    def assess(self, spatial: SpatialKernel, clip: bool) -> tuple[int, int]:
        """AssessSpatialKernelVisitor: diffim statistics with the spatial kernel at each star."""
        n_rej = n_good = 0
        for i in self.visited():
            st = self.stamps[i]
            mean, rms = self.stats(
                i, spatial.kernel_image(st.x, st.y), spatial.background(st.x, st.y)
            )
            if self.recent[i] is not None and self._judge(mean, rms, clip):
                self.status[i], n_good = self.GOOD, n_good + 1
            else:
                self.status[i], n_rej = self.BAD, n_rej + 1
        self.rejections["spatial"] += n_rej
        return n_rej, n_good

    def spatial_fit(self, basis: np.ndarray, **kw) -> SpatialKernel:
        """BuildSpatialKernelVisitor: unbuilt visited candidates become BAD (they keep their
        cell slot, as in afw), the others enter :func:`solve_spatial`."""
        idx = self.visited()
        unbuilt = np.array([self.recent[i] is None for i in idx], bool)
        self.status[idx[unbuilt]] = self.BAD
        idx = idx[~unbuilt]
        if idx.size == 0:
            raise ValueError(
                "no usable kernel candidates remain for the spatial fit "
                f"(all {len(self.stamps)} stamps rejected)"
            )
        pos = np.array([(self.stamps[i].x, self.stamps[i].y) for i in idx])
        return solve_spatial([self.recent[i] for i in idx], pos, basis, **kw)


def _pca_basis(kernels: np.ndarray, n_pca: int, subtract_mean: bool) -> np.ndarray:
    """[mean,] eigen-kernels of the kernel images, first min(n_pca, n) kept, renormalised."""
    n, size = kernels.shape[0], kernels.shape[-1]
    x = kernels.reshape(n, -1)
    mean = x.mean(axis=0)
    if subtract_mean:
        x = x - mean
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    eig = ([mean] if subtract_mean else []) + list(vt)
    keep = [e for e in eig[: min(n_pca, sv.size)] if np.isfinite(e).all()]
    return renormalize_basis(np.array(keep).reshape(-1, size, size))


def _cells(stamps: Sequence[CandidateStamp], bbox, cell_size, ratings) -> list[np.ndarray]:
    """Candidate indices per cell (afw SpatialCellSet over ``bbox``), best rating first."""
    x0, y0, x1, y1 = bbox
    ncx = max(1, math.ceil((x1 - x0) / cell_size[0]))
    ncy = max(1, math.ceil((y1 - y0) / cell_size[1]))
    pos = np.array([(s.x, s.y) for s in stamps], np.float64).reshape(-1, 2)
    outside = (pos[:, 0] < x0) | (pos[:, 0] > x1) | (pos[:, 1] < y0) | (pos[:, 1] > y1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"candidate {i} at {tuple(pos[i])} lies outside bbox {tuple(bbox)}")
    cx = np.minimum(((pos[:, 0] - x0) // cell_size[0]).astype(int), ncx - 1)
    cy = np.minimum(((pos[:, 1] - y0) // cell_size[1]).astype(int), ncy - 1)
    cell = cy * ncx + cx
    order = np.lexsort((-np.asarray(ratings, np.float64), cell))  # stable within a cell
    return [order[cell[order] == c] for c in range(ncx * ncy) if (cell == c).any()]


def _rating(st: CandidateStamp, core_radius: int, bad_bits: int) -> float:
    """``st.rating``, else the mean science S/N over the central (2r+1)² box (KernelCandidate)."""
    if st.rating is not None:
        return float(st.rating)
    sci, var = np.asarray(st.science, np.float64), np.asarray(st.variance_science, np.float64)
    cy, cx = sci.shape[0] // 2, sci.shape[1] // 2
    box = (
        slice(max(0, cy - core_radius), cy + core_radius + 1),
        slice(max(0, cx - core_radius), cx + core_radius + 1),
    )
    keep = np.ones(sci[box].shape, bool)
    if st.mask_science is not None and bad_bits:
        keep = (np.asarray(st.mask_science)[box] & bad_bits) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = 1.0 / var[box]
        keep &= np.isfinite(ivar)
        mean, _ = mean_rms(sci[box][keep] * np.sqrt(ivar[keep]))
    return mean if math.isfinite(mean) else -math.inf


def _is_delta_basis(basis: np.ndarray) -> bool:
    flat = basis.reshape(basis.shape[0], -1)
    return flat.shape[0] == flat.shape[1] and np.array_equal(flat, np.eye(flat.shape[0]))


def fit_psf_matching_kernel(
    stamps: Sequence[CandidateStamp],
    *,
    basis: np.ndarray,
    bbox: tuple[float, float, float, float],
    regularization: np.ndarray | None = None,
    options: FitOptions | None = None,
) -> tuple[SpatialKernel, FitInfo]:
    """Spatially varying PSF-matching kernel with LSST's candidate rejection (PsfMatchTask._solve).

    Candidates are binned in ``options.cell_size`` cells over ``bbox`` and ranked by rating;
    each step visits the first ``n_star_per_cell`` (-1: all) non-rejected candidates of every
    cell:

    1. single kernels (:func:`~coaddx.kernels.psfmatch.solve.solve_candidate`) until none is
       rejected (NaN statistics, or |mean z| > ``residual_mean_max`` / rms z >
       ``residual_std_max`` when clipping);
    2. kernel sums: MEANCLIP/STDEVCLIP (3σ, 3 iterations); reject |ksum - μ| > max_ksum_sigma·s
       and restart step 1 (uncounted) if any;
    3. optionally a PCA basis from the visited kernels (refit; restart if any rejection);
    4. spatial fit (:func:`~coaddx.kernels.psfmatch.solve.solve_spatial`), 5. assessment with
       the spatial kernel at each candidate; stop when nothing is rejected, else iterate (at
       most ``max_spatial_iterations``), with a final fit on the survivors.

    ``regularization`` (with ``options.lam``) applies to the single kernels of the input basis
    only. ``options`` None means :class:`FitOptions` defaults.

    Raises
    ------
    ValueError
        If there are no stamps or no usable candidate remains.
    """
    o = options if options is not None else FitOptions()
    if len(stamps) == 0:
        raise ValueError("no kernel candidates: the stamp list is empty")
    basis = np.asarray(basis, np.float64)
    constant_first_term = o.constant_first_term
    if constant_first_term is None:
        constant_first_term = o.use_pca or not _is_delta_basis(basis)
    ratings = [_rating(s, o.core_radius, o.bad_bits) for s in stamps]
    loop = _Loop(stamps, _cells(stamps, bbox, o.cell_size, ratings), o, regularization)
    spatial_kw = {
        "spatial_order": o.spatial_order,
        "bg_order": o.bg_order,
        "model": o.model,
        "bbox": bbox,
        "fit_background": o.fit_background,
        "constant_first_term": constant_first_term,
    }
    it = restarts = n_rej_spatial = 0
    spatial_basis, converged, spatial = basis, False, None
    ksum: tuple[float, float] = (math.nan, math.nan)
    while it < o.max_spatial_iterations:
        while loop.build_single(basis) > 0:
            pass
        ksum_mean, ksum_std, n_rej = loop.clip_kernel_sum(o.max_ksum_sigma, o.kernel_sum_clipping)
        ksum = (ksum_mean, ksum_std)
        if n_rej > 0:
            restarts += 1
            continue
        if o.use_pca:
            spatial_basis, n_rej = loop.pca_basis(o.n_pca, o.subtract_mean_for_pca)
            if n_rej > 0:
                restarts += 1
                continue
        spatial = loop.spatial_fit(spatial_basis, **spatial_kw)
        n_rej_spatial, n_good = loop.assess(spatial, o.spatial_kernel_clipping)
        if n_rej_spatial == 0:
            converged = n_good > 0
            break
        it += 1
    if spatial is None or n_rej_spatial > 0:  # final fit with the survivors
        if o.use_pca:
            spatial_basis, _ = loop.pca_basis(o.n_pca, o.subtract_mean_for_pca)
        spatial = loop.spatial_fit(spatial_basis, **spatial_kw)
    return spatial, _info(loop, spatial_basis, it, restarts, ksum, converged)


def _info(loop: _Loop, basis, it, restarts, ksum, converged) -> FitInfo:
    used = set(loop.visited().tolist())
    names = []
    for i, s in enumerate(loop.status):
        names.append("bad" if s == loop.BAD else "good" if i in used else "unused")
    return FitInfo(
        tuple(names),
        tuple(loop.recent),
        basis,
        it,
        restarts,
        float(ksum[0]),
        float(ksum[1]),
        converged,
        len(used),
        dict(loop.rejections),
    )
