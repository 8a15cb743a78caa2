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
from dataclasses import dataclass, field

import numpy as np

from coaddx.kernels.psfmatch.basis import renormalize_basis
from coaddx.kernels.psfmatch.design import combine_basis
from coaddx.kernels.psfmatch.solve import (
    CandidateSolution,
    SpatialKernel,
    T_Model,
    mean_rms,
    solve_normal_batch,
    solve_spatial,
)
from coaddx.kernels.psfmatch.stamps import (
    OK,
    StampStack,
    core_box,
    keep_mask,
    normal_equations,
    stamp_stats,
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
    components, ``subtract_mean_for_pca``. ``threads``: threads of the compiled candidate
    fits and statistics (None: the CPUs visible, at most 4; set 1 when the fit itself runs in
    parallel tasks); results do not depend on it.
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
    threads: int | None = None

    def __post_init__(self) -> None:
        if (
            self.max_spatial_iterations < 1
            or self.n_star_per_cell == 0
            or self.n_star_per_cell < -1
        ):
            raise ValueError("max_spatial_iterations must be >= 1 and n_star_per_cell >= 1 or -1")


def _stacks(stamps: Sequence[CandidateStamp]) -> list[tuple[np.ndarray, StampStack | None]]:
    """The stamps stacked by shape: (stamp indices, their StampStack) per shape; None for
    stamps whose planes differ in shape (they cannot be fitted)."""
    shapes: dict[tuple, list[int]] = {}
    for i, st in enumerate(stamps):
        key = tuple(
            np.shape(p)
            for p in (st.template, st.science, st.variance_template, st.variance_science)
        )
        shapes.setdefault(key if len(set(key)) == 1 else ("mismatch",), []).append(i)
    out: list[tuple[np.ndarray, StampStack | None]] = []
    for key, idx in shapes.items():
        sel = [stamps[i] for i in idx]
        if key == ("mismatch",):
            out.append((np.array(idx, np.intp), None))
            continue
        out.append(
            (
                np.array(idx, np.intp),
                StampStack.from_planes(
                    [st.template for st in sel],
                    [st.science for st in sel],
                    [st.variance_template for st in sel],
                    [st.variance_science for st in sel],
                    [st.mask_template for st in sel],
                    [st.mask_science for st in sel],
                ),
            )
        )
    return out


class _Loop:
    """Mutable candidate bookkeeping of the 6.4 loop (SpatialCellSet + visitors); candidates
    are fitted and assessed a batch at a time (compiled, :mod:`~coaddx.kernels.psfmatch.stamps`)."""

    UNKNOWN, GOOD, BAD = 0, 1, 2

    def __init__(self, stamps, cells, opts: FitOptions, regularization: np.ndarray | None):
        self.stamps, self.cells, self.opts = stamps, cells, opts
        self.n_per_cell, self.regularization = opts.n_star_per_cell, regularization
        self.core_radius = opts.core_radius if opts.use_core_stats else None
        self.status = np.zeros(len(stamps), np.int8)
        self.orig: list[CandidateSolution | None] = [None] * len(stamps)
        self.recent: list[CandidateSolution | None] = [None] * len(stamps)
        self.rejections = {"single": 0, "kernel_sum": 0, "pca": 0, "spatial": 0}
        self.groups = _stacks(stamps)
        self.where = np.empty((len(stamps), 2), np.intp)  # (group, row) of every stamp
        for g, (idx, _) in enumerate(self.groups):
            self.where[idx, 0], self.where[idx, 1] = g, np.arange(idx.size)
        self._keep: dict[tuple[int, int], np.ndarray] = {}

    def visited(self) -> np.ndarray:
        """The first ``n_per_cell`` non-BAD candidates of every cell (rating order)."""
        out = []
        for cell in self.cells:
            ok = cell[self.status[cell] != self.BAD]
            out.extend(ok if self.n_per_cell < 0 else ok[: self.n_per_cell])
        return np.array(sorted(out), dtype=np.intp)

    def keep(self, g: int, stack: StampStack, half: int) -> np.ndarray:
        """The pixels of group ``g``'s stamps that enter the statistics (cached per half)."""
        if (g, half) not in self._keep:
            self._keep[g, half] = keep_mask(
                stack, half, bad_bits=self.opts.bad_bits, core_radius=self.core_radius
            )
        return self._keep[g, half]

    def _by_group(self, idx: np.ndarray):
        """(group, positions in ``idx``, stack rows) for the stamps ``idx``."""
        for g in np.unique(self.where[idx, 0]):
            pos = np.flatnonzero(self.where[idx, 0] == g)
            yield g, pos, self.where[idx[pos], 1]

    def _fit(self, idx: np.ndarray, basis: np.ndarray, regularize: bool) -> list:
        """Single-kernel solutions (with statistics) of the stamps ``idx``; None where none."""
        out: list[CandidateSolution | None] = [None] * idx.size
        for g, pos, rows in self._by_group(idx):
            for p, sol in zip(pos, self._fit_group(g, rows, basis, regularize), strict=True):
                out[p] = sol
        return out

    def _fit_group(self, g: int, rows: np.ndarray, basis: np.ndarray, regularize: bool) -> list:
        o, stack = self.opts, self.groups[g][1]
        n_b = basis.shape[0]
        if stack is None:
            return [None] * rows.size
        try:
            eq = normal_equations(
                stack,
                rows,
                basis,
                fit_background=o.fit_background,
                constant_variance=o.constant_variance,
                threads=o.threads,
            )
            m, lam = eq.m, 0.0
            if regularize and self.regularization is not None:
                lam = o.lam
                m = m + lam * _pad(np.asarray(self.regularization, np.float64), m.shape[1])
        except ValueError:  # stamps smaller than the kernel, a mismatched regularisation
            return [None] * rows.size
        use = eq.status == OK
        a, failed = solve_normal_batch(m[use], eq.b[use])
        ok = np.flatnonzero(use)[~failed]
        a = a[~failed]
        if o.max_condition_number is not None and ok.size:
            vals = np.abs(np.linalg.eigvalsh(m[ok]))
            with np.errstate(divide="ignore", invalid="ignore"):
                cond = np.where(vals.min(axis=1) > 0, vals.max(axis=1) / vals.min(axis=1), np.inf)
            good = cond <= o.max_condition_number
            ok, a = ok[good], a[good]
        kernels = combine_basis(np.ascontiguousarray(a[:, :n_b]), basis)
        bg = a[:, n_b] if o.fit_background else np.zeros(ok.size)
        keep = self.keep(g, stack, basis.shape[-1] // 2)
        mean, rms = stamp_stats(stack, rows[ok], kernels, bg, keep, threads=o.threads)
        out: list[CandidateSolution | None] = [None] * rows.size
        for j, i in enumerate(ok):
            out[i] = CandidateSolution(
                a[j, :n_b].copy(),
                float(bg[j]),
                float(kernels[j].sum()),
                m[i],
                eq.b[i],
                kernels[j],
                float(eq.variance[i]) if o.constant_variance else None,
                float(lam),
                eq.n_pixels,
                float(mean[j]),
                float(rms[j]),
            )
        return out

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
        todo = np.array(
            [i for i in self.visited() if (self.recent[i] is not None) == rebuild], np.intp
        )  # rebuild: only already-built ones
        for i, sol in zip(todo, self._fit(todo, basis, regularize=not rebuild), strict=True):
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
        idx = self.visited()
        mean, rms = np.full(idx.size, np.nan), np.full(idx.size, np.nan)
        for g, pos, rows in self._by_group(idx):
            stack = self.groups[g][1]
            if stack is None:
                continue
            xs = np.array([self.stamps[i].x for i in idx[pos]], np.float64)
            ys = np.array([self.stamps[i].y for i in idx[pos]], np.float64)
            bg = np.broadcast_to(np.asarray(spatial.background(xs, ys), np.float64), xs.shape)
            keep = self.keep(g, stack, spatial.size // 2)
            kernels = spatial.kernel_images(xs, ys)
            mean[pos], rms[pos] = stamp_stats(
                stack, rows, kernels, bg, keep, threads=self.opts.threads
            )
        for i, mu, sd in zip(idx, mean, rms, strict=True):
            if self.recent[i] is not None and self._judge(mu, sd, clip):
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


def _pad(h: np.ndarray, n: int) -> np.ndarray:
    """The regularisation matrix for n parameters (the background term unregularised)."""
    if h.shape == (n, n):
        return h
    if h.shape == (n - 1, n - 1):
        return np.pad(h, ((0, 1), (0, 1)))
    raise ValueError(f"regularization matrix {h.shape} does not match {n} parameters")


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
    box = core_box(sci.shape, core_radius)
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
